"""Named CAE recipes: an architecture plus training options, as plain config objects.

A :class:`CaePreset` holds the :class:`~captum_secam.cae.CaeConfig` fields that do not depend
on the data (widths, depths, options) and the keyword arguments of
:func:`~captum_secam.cae.train_cae` it was tuned with. ``train_cae`` stores the preset it ran
(``preset=``) in the model's ``training_info`` and in its training checkpoint, so a saved model
says how it was built and trained.

* ``small`` -- the CPU recipe of the shipped 28-px models (the :class:`CaeConfig` defaults).
* ``paper`` -- the authors' 256² networks: width 64, two down-sampling steps (a 256×64×64
  individual code at 256 px), 6 residual blocks, MLP width 256, 5×5 up-sampling convolutions,
  AdaIN in the residual blocks only, mean pooling, a discriminator of width 64 with 4
  down-sampling steps and 2 residual blocks; about 20 M generator and 12 M discriminator
  parameters, batch 1, lr 1e-4, Adam (0.5, 0.999), weight decay 1e-4, the step schedule
  (halve every 100k steps) and their loss weights. Train it on a GPU.

Example:
    >>> cfg = get_preset("small").model_config(28, in_channels=1, num_classes=2)
    >>> cfg.base_channels
    16
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from captum_secam.cae.model import CaeConfig

__all__ = ["PRESETS", "CaePreset", "get_preset"]

_DATA_FIELDS = ("image_size", "in_channels", "num_classes", "class_names")


@dataclass(frozen=True)
class CaePreset:
    """A named architecture and training recipe.

    Attributes:
        name: the preset's name.
        architecture: :class:`CaeConfig` fields other than ``image_size``, ``in_channels``,
            ``num_classes`` and ``class_names``.
        training: keyword arguments of :func:`~captum_secam.cae.train_cae` (``batch_size``,
            ``lr``, ``lr_schedule``, ``weight_decay``, ``loss_weights``, ...).
        description: one line for humans.
    """

    name: str
    architecture: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        known = {f.name for f in fields(CaeConfig)} - set(_DATA_FIELDS)
        unknown = set(self.architecture) - known
        if unknown:
            raise ValueError(
                f"unknown architecture keys {sorted(unknown)}; known: {sorted(known)}."
            )

    def model_config(
        self,
        image_size: int | Sequence[int],
        in_channels: int,
        num_classes: int,
        class_names: Sequence[str] = (),
        **overrides: Any,
    ) -> CaeConfig:
        """The :class:`CaeConfig` of this preset for data of this size, channels and classes
        (``overrides`` replace architecture fields, e.g. ``disc_downsample=3``)."""
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        cfg = CaeConfig(
            image_size=(int(size[0]), int(size[1])),
            in_channels=in_channels,
            num_classes=num_classes,
            class_names=tuple(class_names),
            **{**dict(self.architecture), **overrides},
        )
        cfg.validate()
        return cfg

    def to_json_dict(self) -> dict[str, Any]:
        """The preset as a JSON-serialisable dict (stored with checkpoints)."""
        return {
            "name": self.name,
            "architecture": dict(self.architecture),
            "training": {
                k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.training.items()
            },
            "description": self.description,
        }

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> CaePreset:
        """Rebuild a preset from :meth:`to_json_dict` output."""
        unknown = set(d) - {"name", "architecture", "training", "description"}
        if unknown:
            raise ValueError(f"unknown preset keys {sorted(unknown)}; the dict is not a preset.")
        training = dict(d.get("training", {}))
        if "betas" in training:
            training["betas"] = tuple(training["betas"])
        return cls(
            name=str(d["name"]),
            architecture=dict(d.get("architecture", {})),
            training=training,
            description=str(d.get("description", "")),
        )


REFERENCE_LOSS_WEIGHTS: dict[str, float] = {
    "recon": 10.0,
    "class_code": 1.0,
    "individual_code": 1.0,
    "cycle": 10.0,
    "adversarial": 1.0,
    "class": 1.0,
    "code_class": 0.0,
    "class_code_center": 0.0,
    "swap_proximity": 0.0,
    "conditional_adversarial": 0.0,
    "edit_sparsity": 0.0,
    "recon_class": 0.0,
    "d_real_fake": 1.0,
    "d_class": 2.0,
    "d_conditional": 0.0,
}
"""The authors' weights (their public code); the terms they do not have are 0.

Defined here because the ``paper`` preset trains with them; :mod:`captum_secam.cae.training`
re-exports them."""

PRESETS: dict[str, CaePreset] = {
    "small": CaePreset(
        "small",
        architecture={},  # the CaeConfig defaults: the shipped 28-px CPU recipe
        training={"batch_size": 16, "lr": 3e-4, "lr_schedule": "linear"},
        description="CPU demos at 28-64 px: the recipe of the shipped Fashion-MNIST CAEs.",
    ),
    "paper": CaePreset(
        "paper",
        architecture={
            "class_code_dim": 8,
            "base_channels": 64,
            "n_downsample": 2,
            "n_res_blocks": 6,
            "class_downsample": 4,
            "mlp_dim": 256,
            "disc_channels": 64,
            "disc_res_blocks": 2,
            "up_kernel": 5,
            "adain_upsampling": False,
            "pooling": "mean",
            "disc_downsample": 4,
            "class_edit_mask": False,
        },
        training={
            "batch_size": 1,
            "lr": 1e-4,
            "betas": (0.5, 0.999),
            "weight_decay": 1e-4,
            "lr_schedule": "step",
            "lr_step_size": 100_000,
            "lr_gamma": 0.5,
            "discriminator_warmup": 0,
            "loss_weights": dict(REFERENCE_LOSS_WEIGHTS),
        },
        description="The authors' 256-px networks and recipe (~20 M generator parameters; GPU).",
    ),
}
"""The built-in presets by name."""


def get_preset(name: str | CaePreset) -> CaePreset:
    """The preset called ``name`` (a :class:`CaePreset` is returned as it is)."""
    if isinstance(name, CaePreset):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]
