# data.intensity: auto (per_image for greyscale images) as the default, at commit 7d6c280, run from a
# checkout of it (PYTHONPATH=src), one after the other, nothing else timed beside them; the MONAI sides
# taken from the committed results on the same manifests (--monai-from checks the manifest's SHA-256).
python benchmarks/recipe_vs_monai.py ../shared/data/chest-ct --budget 15 \
    --monai-from benchmarks/results/recipe_vs_monai-chest-ct.json --out benchmarks/results/recipe_vs_monai-chest-ct.json
python benchmarks/recipe_vs_monai.py ../shared/data/brain-tumor-mri-yn --budget 5 \
    --monai-from benchmarks/results/recipe_vs_monai-brain-tumor-mri-yn.json --out benchmarks/results/recipe_vs_monai-brain-tumor-mri-yn.json
python benchmarks/recipe_vs_monai.py ../shared/data/breastmnist/breastmnist.npz --budget 10 \
    --monai-from benchmarks/results/recipe_vs_monai-breastmnist.json --out benchmarks/results/recipe_vs_monai-breastmnist.json
