"""Which class of a binary task is "positive": the one sensitivity, specificity, the ROC curve and
the operating threshold are about.

A clinician reads sensitivity as the share of diseased cases found. Class index 1 (the second
name in sorted order) is often the healthy one: BreastMNIST's classes are ``malignant`` and
``normal, benign``. So the positive class is ``data.positive_class`` (``--positive-class``) when
given, else the class whose negation names the other (``Demented`` beside ``Non-Demented``), else
the class whose name says disease (:data:`DISEASE_WORDS`: malignant, tumor, yes,
cancer, carcinoma, ...), else the other class when one name says healthy (:data:`HEALTHY_WORDS`:
normal, benign, no, non, healthy, ...), else class index 1 as before, with a note that says how to
choose. :func:`choose_positive_class` returns the index and that reason; the trainer prints it
and records the name in the run (``config.yaml`` ``data.positive_class`` and the spec's
``extra["positive_class"]``).

Torch-free (stdlib only).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

__all__ = ["DISEASE_WORDS", "HEALTHY_WORDS", "NEGATIONS", "choose_positive_class"]

#: Word stems that mark a disease class; a class name matches when one of its words (split at
#: anything but letters and digits, lower case) starts with or, for stems of 6 letters or more,
#: contains one of them (``adenocarcinoma`` contains ``carcinoma``).
DISEASE_WORDS = ("malignan", "tumor", "tumour", "cancer", "carcinoma", "abnormal", "disease", "positive", "yes",
                 "pneumonia", "melanoma", "lesion", "infect", "parasiti", "fracture", "covid", "sick", "patholog",
                 "leukemia", "leukaemia", "glioma", "meningioma", "metasta", "nodule", "mass", "effusion")
#: Words that mark a healthy class (whole words, or the start of one: ``normal`` but not ``abnormal``).
HEALTHY_WORDS = ("normal", "benign", "healthy", "negative", "no", "none", "non", "not", "without", "control",
                 "uninfected")
#: Prefixes that make one class name the negation of the other (``NonDemented`` of ``MildDemented``
#: is not; ``non_cancer`` of ``cancer``, ``No_DR`` of ``DR``, ``NotTumor`` of ``Tumor`` are).
NEGATIONS = ("non", "not", "no", "without")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]


def _tokens(name: str) -> list[str]:
    """Words of a class name, split at separators and camelCase (``NonDemented`` -> non, demented)."""
    return [t.lower() for t in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]


def _negates(a: str, b: str) -> bool:
    """Whether class name ``a`` is ``b`` negated: a :data:`NEGATIONS` word followed by ``b``'s last
    words (``Non-Demented`` / ``Demented``, ``No_DR`` / ``DR``, ``NonDemented`` / ``MildDemented``,
    OASIS's classes), or fused to all of ``b`` (``notumor`` / ``tumor``)."""
    ta, tb = _tokens(a), _tokens(b)
    if len(ta) > 1 and ta[0] in NEGATIONS and tb[-(len(ta) - 1):] == ta[1:]:
        return True
    ka, kb = "".join(_words(a)), "".join(_words(b))
    return bool(kb) and any(ka == p + kb for p in NEGATIONS)


def _says_disease(name: str) -> bool:
    return any(w.startswith(s) or (len(s) >= 6 and s in w) for w in _words(name) for s in DISEASE_WORDS)


def _says_healthy(name: str) -> bool:
    return any(w == s or (len(s) >= 4 and w.startswith(s)) for w in _words(name) for s in HEALTHY_WORDS)


def choose_positive_class(class_names: Sequence[str], given: Optional[str] = None) -> tuple[int, str]:
    """The index of the positive class of a binary task, and a sentence saying why.

    Args:
        class_names: the task's classes in logit order (two for a binary task).
        given: ``data.positive_class`` (``--positive-class``), or None for the default rule (see
            the module docstring).
    Returns:
        ``(index, reason)``; for more than two classes ``(1, "")`` (one-vs-rest metrics need none).
    Raises:
        ValueError: ``given`` is not one of ``class_names``, or is given for more than two classes.
    """
    names = [str(c) for c in class_names]
    if given is not None:
        if len(names) != 2:
            raise ValueError(f"data.positive_class ({given!r}) is for binary tasks; this one has {len(names)} classes "
                             f"{names}: leave it unset")
        if given not in names:
            raise ValueError(f"data.positive_class {given!r} is not a class of this data; the classes are {names}")
        return names.index(given), f"positive class {given!r} (--positive-class)"
    if len(names) != 2:
        return 1, ""
    for i in (0, 1):
        if _negates(names[1 - i], names[i]):
            return i, (f"positive class {names[i]!r}: the other, {names[1 - i]!r}, is its negation "
                       "(set --positive-class to choose it)")
    disease = [i for i, n in enumerate(names) if _says_disease(n) and not _says_healthy(n)]
    if len(disease) == 1:
        i = disease[0]
        return i, f"positive class {names[i]!r}: its name says disease (set --positive-class to choose the other)"
    healthy = [i for i, n in enumerate(names) if _says_healthy(n) and not _says_disease(n)]
    if len(healthy) == 1:
        i = 1 - healthy[0]
        return i, (f"positive class {names[i]!r}: the other, {names[healthy[0]]!r}, is named as healthy "
                   "(set --positive-class to choose it)")
    return 1, (f"positive class {names[1]!r}: class index 1, as neither name says which is the disease; "
               f"set --positive-class {names[0]!r} if that one is")
