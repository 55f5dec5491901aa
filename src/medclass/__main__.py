"""``python -m medclass`` (also what ``torchrun -m medclass`` runs)."""

from .cli import main

main()
