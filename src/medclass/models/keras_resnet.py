"""Keras Applications' ResNet-50 ImageNet weights (``.h5``) converted to medclass's :func:`resnet50`.

Reads ``resnet50_weights_tf_dim_ordering_tf_kernels.h5`` and ``..._notop.h5`` (Keras 2 HDF5, modern or
legacy layer names) with h5py; :func:`convert_keras_resnet50` documents the differences between the
two models. Registered with :func:`medclass.models.pretrained.register_weights_reader` for ``.h5`` and
``.hdf5``, so every path that reads a weights file (``model.pretrained``, ``load_pretrained``) reads these.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .pretrained import (
    KERAS_BN_EPSILON, KERAS_LEGACY_BN_EPSILON, TORCH_BN_EPSILON, PretrainedError, _listing, register_weights_reader,
)
from .resnet import RESNET_DEPTHS, Bottleneck, ResNet

__all__ = ["convert_keras_resnet50"]


# -- Keras Applications ResNet-50 ----------------------------------------------------------------

_KERAS_VARS = {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"}
_MODERN_BLOCK = re.compile(r"^conv([2-5])_block(\d+)_([0-3])_(conv|bn)$")
_LEGACY_BLOCK = re.compile(r"^(res|bn)([2-5])([a-z])_branch(1|2a|2b|2c)$")
_LEGACY_BRANCH = {"1": 0, "2a": 1, "2b": 2, "2c": 3}
_HEAD_NAMES = ("predictions", "probs", "fc1000")


def _h5_string_list(group: Any, name: str) -> Optional[list[str]]:
    """An attribute holding a list of strings, as Keras writes it (also split into ``name0``,
    ``name1``, ... when it outgrew HDF5's 64 KiB attribute limit); None when absent."""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, (bytes, np.bytes_)) else str(v) for v in values]


def _canonical_keras_layer(name: str) -> tuple[Optional[str], bool]:
    """Keras layer name -> (name in the ``conv1_conv`` / ``conv2_block1_1_bn`` / ``predictions``
    scheme or None when not a ResNet layer, whether it was a legacy ``res2a_branch2a`` name)."""
    if name in ("conv1_conv", "conv1_bn") or _MODERN_BLOCK.match(name):
        return name, False
    if name in _HEAD_NAMES:
        return "predictions", name == "fc1000"
    if name == "conv1":
        return "conv1_conv", True
    if name == "bn_conv1":
        return "conv1_bn", True
    m = _LEGACY_BLOCK.match(name)
    if m:
        kind = "conv" if m.group(1) == "res" else "bn"
        block = ord(m.group(3)) - ord("a") + 1
        return f"conv{m.group(2)}_block{block}_{_LEGACY_BRANCH[m.group(4)]}_{kind}", True
    return None, False


def _read_keras_h5(path: Path) -> tuple[dict[str, dict[str, np.ndarray]], bool, list[str]]:
    """All ResNet layers' arrays of a Keras 2 HDF5 file, by canonical layer name and variable
    name; whether legacy names were seen; the weighted layers that were not ResNet layers."""
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise PretrainedError(f"reading {path} needs the h5py package (pip install h5py)") from e
    layers: dict[str, dict[str, np.ndarray]] = {}
    legacy_seen = False
    ignored: list[str] = []
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise PretrainedError(f"cannot open {path} as HDF5: {e}") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f  # full-model save vs save_weights
        group_names = _h5_string_list(root, "layer_names")
        if group_names is None:
            group_names = [k for k in root.keys() if isinstance(root[k], h5py.Group)]
        for group_name in group_names:
            group = root[group_name]
            weight_names = _h5_string_list(group, "weight_names")
            if weight_names is None:
                if "vars" in group or "layers" in root:
                    raise PretrainedError(
                        f"{path} looks like a Keras 3 '.weights.h5' file, which is not supported: "
                        "load it in Keras and re-save it in the Keras 2 HDF5 format "
                        "(tf.keras model.save_weights('weights.h5'))"
                    )
                continue
            for weight_name in weight_names:
                # "conv1_conv/kernel:0"; a nested model's weights sit in one group whose weight
                # names still carry each layer's name before the variable's.
                parts = weight_name.split("/")
                var = parts[-1].split(":")[0]
                layer = parts[-2] if len(parts) >= 2 else group_name
                canonical, legacy = _canonical_keras_layer(layer)
                if canonical is None:
                    if layer not in ignored:
                        ignored.append(layer)
                    continue
                if var not in _KERAS_VARS:
                    raise PretrainedError(
                        f"{path}: layer {layer!r} has a variable {weight_name!r} this converter does not "
                        f"know (expected one of {sorted(_KERAS_VARS)}; Keras 1 files are not supported)"
                    )
                legacy_seen |= legacy
                layers.setdefault(canonical, {})[var] = np.asarray(group[weight_name])
    return layers, legacy_seen, ignored


def _expected_resnet_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of ``resnet{depth}()`` (1000 classes, no ``num_batches_tracked``),
    built on the meta device (no memory, no initialisation cost)."""
    block, stage_depths = RESNET_DEPTHS[depth]
    with torch.device("meta"):
        model = ResNet(block, stage_depths)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def _torch_prefix(canonical: str) -> tuple[str, str]:
    """``conv2_block1_1_conv`` -> ("layer1.0.conv1", "conv"); ``..._0_bn`` -> ("layer1.0.downsample.1", "bn")."""
    if canonical == "conv1_conv":
        return "conv1", "conv"
    if canonical == "conv1_bn":
        return "bn1", "bn"
    if canonical == "predictions":
        return "fc", "dense"
    m = _MODERN_BLOCK.match(canonical)
    assert m is not None
    stage, block, branch, kind = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    base = f"layer{stage - 1}.{block - 1}"
    if branch == 0:
        return f"{base}.downsample.{0 if kind == 'conv' else 1}", kind
    return f"{base}.{kind}{branch}", kind


def convert_keras_resnet50(
    h5_path: Union[str, os.PathLike],
    epsilon: Optional[float] = None,
    rgb_input: bool = False,
) -> dict[str, Tensor]:
    """Convert Keras Applications' ResNet-50 ImageNet weights to a state dict of :func:`resnet50`.

    Reads ``resnet50_weights_tf_dim_ordering_tf_kernels.h5`` (with the 1000-class ``predictions``
    layer) or ``..._notop.h5`` (no classifier) with h5py: the Keras 2 HDF5 layout, either a
    weights-only save (layer groups at the top level, the Applications files) or a full-model
    save (under ``model_weights``); each layer group lists its datasets in the ``weight_names``
    attribute (e.g. ``conv1_conv/kernel:0``). A ResNet-50 nested in a larger Keras model works too;
    other weighted layers (a custom head) are skipped with a warning. Keras 3 ``.weights.h5``
    files and Keras 1 files are not supported.

    Layer names (``keras.applications.resnet``): ``conv1_conv``, ``conv1_bn``,
    ``conv{S}_block{K}_{B}_conv`` / ``_bn`` for stage S = 2..5, block K, branch B
    (0 = projection shortcut, 1..3 = the bottleneck's convolutions), ``predictions`` (also
    ``probs``). The legacy ``keras_applications/resnet50.py`` names (``conv1``, ``bn_conv1``,
    ``res2a_branch2a``, ``bn2a_branch1``, ``fc1000``) are mapped to the same. They become
    ``conv1``, ``bn1``, ``layer{S-1}.{K-1}.conv{B}`` / ``bn{B}``, ``...downsample.0`` / ``.1``, ``fc``.
    Stage depths are read from the file, so Keras' ResNet-101/152 convert as well.

    Tensor layouts: a Keras conv kernel ``(kh, kw, in, out)`` becomes ``(out, in, kh, kw)``; a
    dense kernel ``(in, out)`` becomes ``(out, in)``; BN ``gamma, beta, moving_mean,
    moving_variance`` become ``weight, bias, running_mean, running_var``. All float32.

    Differences folded in, so that every conv + BN pair computes exactly what Keras computes
    (to float32 rounding):

    - Keras' ResNet convolutions have biases, ours have none (a BN follows each). A conv bias
      ``b`` only shifts the BN input, so it is folded into the BN:
      ``running_mean = moving_mean - b``.
    - Keras' BN epsilon is 1.001e-5 (legacy files: Keras' default 1e-3), PyTorch's 1e-5; the
      difference is added to the variance: ``running_var = moving_variance + eps_keras - 1e-5``.

    Differences that remain (document them wherever these weights are used):

    - Stride placement. Keras' ResNet50 is ResNet v1 (He et al. 2016): a down-sampling block
      (first block of stages 3-5) has its stride 2 in the FIRST 1x1 convolution
      (``_1_conv``). Ours is v1.5 (torchvision): the stride sits in the 3x3 (``conv2``). The
      parameters have the same shapes and are used as trained, but the network computes a
      slightly different function, so the converted model does NOT reproduce Keras' outputs or
      accuracy exactly; fine-tuning absorbs the difference. (Stem and stage 2 are identical.)
    - Keras' "same" padding of a strided 3x3 conv is asymmetric (bottom/right); ours is
      symmetric padding 1. Only matters together with the point above.
    - The stem: Keras pads 3 then applies a valid 7x7/2 conv (= our ``padding=3``), and pads
      1 with zeros before a valid 3x3/2 max-pool, which equals PyTorch's ``padding=1`` max-pool
      here because its input follows a ReLU (non-negative). The legacy ``resnet50.py`` has no
      padding before the max-pool (one row/column smaller feature maps).
    - Input convention: these weights expect Keras' "caffe" preprocessing
      (``keras.applications.resnet50.preprocess_input``): BGR channel order, pixel values in
      0-255 minus :data:`KERAS_CAFFE_MEAN_BGR` ``(103.939, 116.779, 123.68)``, no scaling --
      not torchvision's RGB [0, 1] / :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`. With
      ``rgb_input=True`` the input channels of ``conv1.weight`` are reversed so the model takes
      RGB; then with images in [0, 1] the exact equivalent is normalising with
      ``mean = (123.68/255, 116.779/255, 103.939/255)`` and ``std = (1/255, 1/255, 1/255)``.

    Args:
        h5_path: the Keras HDF5 weights file.
        epsilon: the Keras BN epsilon; None picks 1.001e-5, or 1e-3 for legacy layer names.
        rgb_input: reverse ``conv1.weight``'s input channels (BGR -> RGB input).

    Returns:
        ``{name: float32 tensor}`` with exactly the keys of ``resnet50().state_dict()`` except the
        ``num_batches_tracked`` counters, without ``fc.*`` for a notop file.

    Raises:
        PretrainedError: the file cannot be read, or it lacks layers or variables of a
            bottleneck ResNet, or a shape does not fit (the message lists them).
    """
    path = Path(h5_path)
    if not path.is_file():
        raise PretrainedError(f"no Keras weights file at {path}")
    layers, legacy, ignored = _read_keras_h5(path)
    if ignored:
        warnings.warn(
            f"{path}: skipped {len(ignored)} weighted layers that are not ResNet-50 layers: "
            + ", ".join(ignored[:10]) + (", ..." if len(ignored) > 10 else ""),
            stacklevel=2,
        )
    if not layers:
        raise PretrainedError(
            f"{path} has no Keras ResNet layers (conv1_conv, conv2_block1_1_conv, ...): not a Keras "
            "ResNet-50 weights file"
        )
    eps = epsilon if epsilon is not None else (KERAS_LEGACY_BN_EPSILON if legacy else KERAS_BN_EPSILON)

    # Stage depths from the block numbers present -> the matching bottleneck ResNet.
    blocks_in_stage = {2: 0, 3: 0, 4: 0, 5: 0}
    for name in layers:
        m = _MODERN_BLOCK.match(name)
        if m:
            stage = int(m.group(1))
            blocks_in_stage[stage] = max(blocks_in_stage[stage], int(m.group(2)))
    stage_depths = tuple(blocks_in_stage[s] for s in (2, 3, 4, 5))
    depth = next((d for d, (blk, ls) in RESNET_DEPTHS.items() if blk is Bottleneck and tuple(ls) == stage_depths), None)
    if depth is None:
        raise PretrainedError(
            f"{path}: blocks per stage {list(stage_depths)} match no bottleneck ResNet "
            f"(ResNet-50 has [3, 4, 6, 3]); is this a Keras ResNet weights file?"
        )
    expected = _expected_resnet_shapes(depth)

    def need(layer: str, var: str, dtype: type = np.float64) -> np.ndarray:
        arrays = layers.get(layer, {})
        if var not in arrays:
            raise PretrainedError(f"{path}: Keras layer {layer!r} lacks its {var!r} weights")
        return np.asarray(arrays[var], dtype=dtype)

    out: dict[str, Tensor] = {}
    problems: list[str] = []
    for canonical in layers:
        prefix, kind = _torch_prefix(canonical)
        if kind == "conv":
            kernel = need(canonical, "kernel", np.float32)
            if kernel.ndim != 4:
                problems.append(f"{canonical}/kernel has shape {kernel.shape}, expected (kh, kw, in, out)")
                continue
            out[f"{prefix}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        elif kind == "bn":
            conv = canonical[: -len("bn")] + "conv"
            bias = layers.get(conv, {}).get("bias")
            mean = need(canonical, "moving_mean")
            if bias is not None:
                if np.shape(bias) != mean.shape:
                    problems.append(f"{conv}/bias has shape {np.shape(bias)}, its BN {mean.shape}")
                    continue
                mean = mean - np.asarray(bias, dtype=np.float64)
            var = need(canonical, "moving_variance") + (eps - TORCH_BN_EPSILON)
            for key, value in (("weight", need(canonical, "gamma")), ("bias", need(canonical, "beta")),
                               ("running_mean", mean), ("running_var", var)):
                out[f"{prefix}.{key}"] = torch.from_numpy(value.astype(np.float32))
        else:  # dense classifier
            kernel = need(canonical, "kernel", np.float32)
            if kernel.ndim != 2:
                problems.append(f"{canonical}/kernel has shape {kernel.shape}, expected (in, out)")
                continue
            out["fc.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
            out["fc.bias"] = torch.from_numpy(need(canonical, "bias").astype(np.float32))
    if rgb_input and "conv1.weight" in out and out["conv1.weight"].shape[1] == 3:
        out["conv1.weight"] = out["conv1.weight"].flip(1).contiguous()

    backbone = {k: s for k, s in expected.items() if not k.startswith("fc.")}
    missing = [k for k in backbone if k not in out]
    problems += [f"{k}: no such parameter in resnet{depth}" for k in out if not k.startswith("fc.") and k not in backbone]
    for k, s in out.items():
        if k.startswith("fc."):
            if k == "fc.weight" and s.shape[1] != expected["fc.weight"][1]:
                problems.append(f"fc.weight has {s.shape[1]} inputs, the model's pooled features {expected['fc.weight'][1]}")
        elif k in backbone and tuple(s.shape) != backbone[k]:
            problems.append(f"{k}: converted {tuple(s.shape)} vs model {backbone[k]}")
    if missing or problems:
        raise PretrainedError(
            f"{path} does not convert to a resnet{depth}: "
            + _listing("missing", missing) + "; " + _listing("problems", problems)
        )
    order = list(expected)
    return {k: out[k] for k in order if k in out}


register_weights_reader((".h5", ".hdf5"), convert_keras_resnet50)
