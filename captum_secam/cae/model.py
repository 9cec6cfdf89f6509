"""Class Association Embedding (CAE) networks: encoders, AdaIN decoder and discriminator.

The model splits an image into

* a *class-associated code* ``c`` (a small vector, ``class_code_dim`` numbers) produced by the
  class encoder ``Ec``: a convolution stack without normalisation, global average pooling and a
  1×1 projection;
* an *individual code* ``s`` (a spatial tensor) produced by the individual encoder ``Es``: a 7×7
  convolution, stride-2 down-sampling convolutions with instance normalisation and residual
  blocks.

The decoder ``G(s, c)`` runs residual blocks whose adaptive instance normalisation (AdaIN) scales
and shifts come from an MLP applied to ``c`` -- the only place where the two codes meet -- then
up-samples back to the image. The discriminator ``D`` outputs two real/fake logits and
``num_classes`` class logits.

Images are float tensors in ``[0, 1]`` at the public API; internally the networks work on
``2x - 1`` and the decoder ends with ``tanh``.

Weights are stored with safetensors next to a JSON file holding the architecture, class names and
class-code centroids (see :meth:`ClassAssociationEmbedding.save`); nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_secam._validation import image_layout_hint

__all__ = ["CaeConfig", "ClassAssociationEmbedding", "cae_paths"]

_FORMAT = "captum_secam.cae"
_FORMAT_VERSION = 1
_POOLINGS = ("mean", "mean_max")


def _pool(x: Tensor, pooling: str) -> Tensor:
    """N×C×h×w → N×C (mean) or N×2C (mean and max) pooled over positions."""
    mean = x.mean(dim=(2, 3))
    return mean if pooling == "mean" else torch.cat([mean, x.amax(dim=(2, 3))], 1)


@dataclass(frozen=True)
class CaeConfig:
    r"""Architecture of a :class:`ClassAssociationEmbedding` (everything needed to rebuild it).

    Attributes:
        image_size: ``(height, width)`` of the images, each divisible by ``2**n_downsample``.
        in_channels: image channels (1 grey, 3 RGB, 4 for four MRI modalities, ...; the
            figures draw 1 or 3).
        num_classes: number of classes ``K >= 2``.
        class_code_dim: length of the class-associated code.
        base_channels: width of the first convolution; doubled at each down-sampling step.
        n_downsample: stride-2 steps of the individual encoder (and up-sampling steps of the
            decoder). The individual code is ``(base_channels * 2**n_downsample) ×
            (H / 2**n_downsample) × (W / 2**n_downsample)``.
        n_res_blocks: residual blocks in the individual encoder and in the decoder.
        class_downsample: stride-2 steps of the class encoder.
        mlp_dim: hidden width of the MLP mapping the class code to AdaIN parameters.
        disc_channels: width of the first discriminator convolution.
        disc_res_blocks: residual blocks in the discriminator.
        up_kernel: kernel size (odd) of the decoder's up-sampling convolutions (5 in the
            reference; 3 is ~2.8× cheaper).
        pooling: how the class encoder and the discriminator pool over positions: ``"mean"``
            (the reference) or ``"mean_max"`` (mean and max side by side, so a small local
            feature -- a lesion, a mark -- is not averaged away).
        disc_downsample: stride-2 steps of the discriminator (2: a ~26-px view at 28 px; the
            reference's 256-px discriminator has 4, see the ``paper`` preset in
            :mod:`captum_secam.cae.presets`).
        adain_upsampling: also modulate the decoder's up-sampling layers with AdaIN (instead of
            layer norm), giving the class code control at every scale; the reference decoder
            uses AdaIN only in the residual blocks.
        class_edit_mask: let the class code change the image only inside a predicted mask:
            the decoder returns :math:`A \odot C(s, c) + (1 - A) \odot B(s)`, where
            :math:`B` decodes the individual code alone and :math:`A(s, c) \in [0, 1]^{H×W}`
            is a per-pixel edit mask (the attention-mask design of GANimation-style image
            editors). With the ``edit_sparsity`` training loss the class-associated change is
            confined to a small region instead of spreading through the instance norms.
        class_names: optional human-readable names, one per class.

    The defaults are the small CPU recipe of the shipped 28-px models (``docs/cae.md``): one
    down-sampling step (a 32×14×14 individual code), AdaIN at every decoder scale, mean+max
    pooling, the edit mask. The authors' 256-px networks are wider and deeper
    (``base_channels=64``, ``n_downsample=2``, ``n_res_blocks=4``, ``up_kernel=5``,
    ``adain_upsampling=False``, ``pooling="mean"``, ``disc_downsample=4``, no edit mask).
    """

    image_size: tuple[int, int]
    in_channels: int
    num_classes: int
    class_code_dim: int = 8
    base_channels: int = 16
    n_downsample: int = 1
    n_res_blocks: int = 1
    class_downsample: int = 4
    mlp_dim: int = 128
    disc_channels: int = 16
    disc_res_blocks: int = 1
    up_kernel: int = 3
    adain_upsampling: bool = True
    pooling: str = "mean_max"
    disc_downsample: int = 2
    class_edit_mask: bool = True
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the fix if the configuration is inconsistent."""
        h, w = self.image_size
        if isinstance(self.in_channels, bool) or self.in_channels < 1:
            raise ValueError(f"in_channels must be an int >= 1, got {self.in_channels}.")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
        for name in ("class_code_dim", "base_channels", "mlp_dim", "disc_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("n_downsample", "n_res_blocks", "class_downsample", "disc_res_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {_POOLINGS}, got {self.pooling!r}.")
        if self.disc_downsample < 1 or 2**self.disc_downsample > min(h, w):
            raise ValueError(
                f"disc_downsample must be >= 1 and leave at least 1 px of {self.image_size}, "
                f"got {self.disc_downsample}."
            )
        if self.up_kernel < 1 or self.up_kernel % 2 == 0:
            raise ValueError(f"up_kernel must be odd and >= 1, got {self.up_kernel}.")
        factor = 2**self.n_downsample
        if h < 8 or w < 8 or h % factor or w % factor:
            raise ValueError(
                f"image_size {self.image_size} must be at least 8 px and divisible by "
                f"2**n_downsample = {factor}; choose another n_downsample or resize the images."
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes is "
                f"{self.num_classes}; give one name per class."
            )

    def to_json_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> CaeConfig:
        """Rebuild a configuration from :meth:`to_json_dict` output, rejecting unknown keys."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"Unknown CAE config keys {sorted(unknown)}; the file is not a CAE config."
            )
        kw = dict(d)
        # files written before these options existed were built the reference way
        kw.setdefault("pooling", "mean")
        kw.setdefault("disc_downsample", 2)
        kw.setdefault("class_edit_mask", False)  # files from before the option: plain decoder
        kw["image_size"] = tuple(int(v) for v in d["image_size"])
        kw["class_names"] = tuple(str(v) for v in d.get("class_names", ()))
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def sha256(self) -> str:
        """A hash of the canonical JSON form, stored in the weights file to pair the two files."""
        return _config_sha256(self.to_json_dict())


def _config_sha256(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def cae_paths(path: str | Path) -> tuple[Path, Path]:
    """Return ``(weights.safetensors, config.json)`` for a checkpoint stem.

    ``"dir/cae"``, ``"dir/cae.safetensors"`` and ``"dir/cae.json"`` all name the pair
    ``dir/cae.safetensors`` + ``dir/cae.json``.
    """
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


class _ResBlock(nn.Module):
    """conv3×3 → norm → act → conv3×3 → norm, plus the identity."""

    def __init__(self, channels: int, norm: str, act: str = "relu") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = norm
        self.act: nn.Module = nn.ReLU() if act == "relu" else nn.LeakyReLU(0.2)

    def _norm(self, x: Tensor, affine: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.norm == "none":
            return x
        x = F.instance_norm(x, eps=1e-5)
        if affine is not None:
            gamma, beta = affine
            x = x * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None]
        return x

    def forward(
        self,
        x: Tensor,
        affine1: tuple[Tensor, Tensor] | None = None,
        affine2: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        y = self.act(self._norm(self.conv1(x), affine1))
        y = self._norm(self.conv2(y), affine2)
        return x + y


class _ClassEncoder(nn.Module):
    def __init__(self, cfg: CaeConfig) -> None:
        super().__init__()
        ch = cfg.base_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, ch, 7, padding=3), nn.ReLU()]
        h, w = cfg.image_size
        for i in range(cfg.class_downsample):
            if min(h, w) < 2:
                break
            out = ch * 2 if i < 2 else ch
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.ReLU()]
            ch, h, w = out, h // 2, w // 2
        self.body = nn.Sequential(*layers)
        self.pooling = cfg.pooling
        width = ch if cfg.pooling == "mean" else 2 * ch
        self.proj = nn.Conv2d(width, cfg.class_code_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = _pool(self.body(x), self.pooling)[:, :, None, None]
        return self.proj(y).flatten(1)


class _IndividualEncoder(nn.Module):
    def __init__(self, cfg: CaeConfig) -> None:
        super().__init__()
        ch = cfg.base_channels
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.in_channels, ch, 7, padding=3),
            nn.InstanceNorm2d(ch),
            nn.ReLU(),
        ]
        for _ in range(cfg.n_downsample):
            layers += [nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1), nn.InstanceNorm2d(ch * 2)]
            layers.append(nn.ReLU())
            ch *= 2
        self.body = nn.Sequential(*layers)
        self.res = nn.ModuleList(_ResBlock(ch, "in") for _ in range(cfg.n_res_blocks))
        self.out_channels = ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        for block in self.res:
            y = block(y)
        return y


class _Decoder(nn.Module):
    def __init__(self, cfg: CaeConfig) -> None:
        super().__init__()
        ch = cfg.base_channels * 2**cfg.n_downsample
        self.res = nn.ModuleList(_ResBlock(ch, "adain") for _ in range(cfg.n_res_blocks))
        self.n_adain = 2 * cfg.n_res_blocks
        self.channels = ch
        self.adain_up = cfg.adain_upsampling
        self.edit_mask = int(cfg.class_edit_mask)
        up_channels = [ch // 2 ** (i + 1) for i in range(cfg.n_downsample)]
        n_params = 2 * ch * self.n_adain + (2 * sum(up_channels) if self.adain_up else 0)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.class_code_dim, cfg.mlp_dim),
            nn.ReLU(),
            nn.Linear(cfg.mlp_dim, cfg.mlp_dim),
            nn.ReLU(),
            nn.Linear(cfg.mlp_dim, n_params),
        )
        k = cfg.up_kernel
        if self.adain_up:
            self.up_convs = nn.ModuleList(
                nn.Conv2d(c_in, c_in // 2, k, padding=k // 2)
                for c_in in [ch, *up_channels][: len(up_channels)]
            )
            self.out_conv = nn.Conv2d(
                up_channels[-1] if up_channels else ch,
                cfg.in_channels + self.edit_mask,
                7,
                padding=3,
            )
            self.up_channels = up_channels
        else:
            self.up = _plain_upsampler(ch, cfg, cfg.in_channels + self.edit_mask)
        # the class-free base image B(s) of the edit-mask decoder
        self.base = _plain_upsampler(ch, cfg, cfg.in_channels) if self.edit_mask else None
        if self.edit_mask:
            # start with a mostly closed mask (A ≈ 0.12): B(s) learns the image first
            last = self.out_conv if self.adain_up else self.up[-1]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            with torch.no_grad():
                last.bias[-1] = -2.0

    def forward(self, individual: Tensor, class_code: Tensor) -> Tensor:
        return self.forward_with_mask(individual, class_code)[0]

    def forward_with_mask(
        self, individual: Tensor, class_code: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """The image in [-1, 1] and, for the edit-mask decoder, the mask A (N×1×H×W)."""
        out = self._class_path(individual, class_code)
        if self.base is None:
            return torch.tanh(out), None
        mask = torch.sigmoid(out[:, -1:])
        content = torch.tanh(out[:, :-1])
        base = torch.tanh(self.base(individual))
        return mask * content + (1.0 - mask) * base, mask

    def _class_path(self, individual: Tensor, class_code: Tensor) -> Tensor:
        n = class_code.shape[0]
        params = self.mlp(class_code)
        n_res = 2 * self.channels * self.n_adain
        res_params = params[:, :n_res].reshape(n, self.n_adain, 2, self.channels)
        y = individual
        for i, block in enumerate(self.res):
            a1 = (res_params[:, 2 * i, 0], res_params[:, 2 * i, 1])
            a2 = (res_params[:, 2 * i + 1, 0], res_params[:, 2 * i + 1, 1])
            y = block(y, a1, a2)
        if not self.adain_up:
            return self.up(y)
        offset = n_res
        for conv, c_out in zip(self.up_convs, self.up_channels, strict=True):
            y = conv(F.interpolate(y, scale_factor=2.0, mode="nearest"))
            gamma = params[:, offset : offset + c_out]
            beta = params[:, offset + c_out : offset + 2 * c_out]
            offset += 2 * c_out
            y = (
                F.instance_norm(y, eps=1e-5) * (1.0 + gamma[:, :, None, None])
                + beta[:, :, None, None]
            )
            y = F.relu(y)
        return self.out_conv(y)


def _plain_upsampler(channels: int, cfg: CaeConfig, out_channels: int) -> nn.Sequential:
    """Nearest up-sampling + conv + group norm per step, then a 7×7 output convolution."""
    k = cfg.up_kernel
    layers: list[nn.Module] = []
    for _ in range(cfg.n_downsample):
        layers += [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(channels, channels // 2, k, padding=k // 2),
            nn.GroupNorm(1, channels // 2),
            nn.ReLU(),
        ]
        channels //= 2
    layers.append(nn.Conv2d(channels, out_channels, 7, padding=3))
    return nn.Sequential(*layers)


class _Discriminator(nn.Module):
    def __init__(self, cfg: CaeConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = cfg.in_channels
        for i in range(cfg.disc_downsample):  # widths ch, 2ch, 4ch, 8ch, 8ch, ...
            c_out = cfg.disc_channels * 2 ** min(i, 3)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        ch = c_in
        self.body = nn.Sequential(*layers)
        self.res = nn.ModuleList(
            _ResBlock(ch, "none", act="lrelu") for _ in range(cfg.disc_res_blocks)
        )
        self.pooling = cfg.pooling
        width = ch if cfg.pooling == "mean" else 2 * ch
        self.head = nn.Sequential(
            nn.Linear(width, ch), nn.LeakyReLU(0.2), nn.Linear(ch, 2 + cfg.num_classes)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.body(x)
        for block in self.res:
            y = block(y)
        out = self.head(_pool(y, self.pooling))
        return out[:, :2], out[:, 2:]


class ClassAssociationEmbedding(nn.Module):
    """Class Association Embedding: class/individual encoders, AdaIN decoder and discriminator.

    ``encode(x) -> (s, c)`` splits images ``x`` (N×C×H×W in ``[0, 1]``) into the spatial
    individual code ``s`` and the class-associated code ``c`` (N×``class_code_dim``);
    ``decode(s, c)`` maps them back to an image in ``[0, 1]``:

    .. math::
        \\hat x = G(E_s(x), E_c(x)),\\qquad x_{a\\to b} = G(E_s(x_a), E_c(x_b)).

    After training, :attr:`centroids` (K×``class_code_dim``) holds the mean class code of each
    class; :class:`~captum_secam.cae.CaeCounterfactual` walks toward them.

    Args:
        image_size: ``int`` (square) or ``(height, width)``; each divisible by
            ``2**n_downsample`` (any even size with the default single step).
        in_channels: image channels (any number >= 1).
        num_classes: number of classes ``K >= 2``.
        class_code_dim: length of the class code (default 8, as in the paper).
        base_channels, n_downsample, n_res_blocks, class_downsample, mlp_dim, disc_channels,
            disc_res_blocks, up_kernel, adain_upsampling, pooling, disc_downsample: widths,
            depths and options, see :class:`CaeConfig`.
        class_names: optional names, one per class.

    Example:
        >>> cae = ClassAssociationEmbedding(28, 1, 10)
        >>> s, c = cae.encode(torch.rand(2, 1, 28, 28))
        >>> cae.decode(s, c).shape
        torch.Size([2, 1, 28, 28])
    """

    centroids: Tensor | None

    def __init__(
        self,
        image_size: int | Sequence[int],
        in_channels: int,
        num_classes: int,
        class_code_dim: int = 8,
        *,
        base_channels: int = 16,
        n_downsample: int = 1,
        n_res_blocks: int = 1,
        class_downsample: int = 4,
        mlp_dim: int = 128,
        disc_channels: int = 16,
        disc_res_blocks: int = 1,
        up_kernel: int = 3,
        adain_upsampling: bool = True,
        pooling: str = "mean_max",
        disc_downsample: int = 2,
        class_edit_mask: bool = True,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        size: tuple[int, ...]
        if isinstance(image_size, int):
            size = (image_size, image_size)
        else:
            size = tuple(int(v) for v in image_size)
            if len(size) != 2:
                raise ValueError(f"image_size must be an int or (height, width), got {image_size}.")
        cfg = CaeConfig(
            image_size=(size[0], size[1]),
            in_channels=in_channels,
            num_classes=num_classes,
            class_code_dim=class_code_dim,
            base_channels=base_channels,
            n_downsample=n_downsample,
            n_res_blocks=n_res_blocks,
            class_downsample=class_downsample,
            mlp_dim=mlp_dim,
            disc_channels=disc_channels,
            disc_res_blocks=disc_res_blocks,
            up_kernel=up_kernel,
            adain_upsampling=adain_upsampling,
            pooling=pooling,
            disc_downsample=disc_downsample,
            class_edit_mask=class_edit_mask,
            class_names=tuple(class_names) if class_names is not None else (),
        )
        cfg.validate()
        self.config = cfg
        self.class_encoder = _ClassEncoder(cfg)
        self.individual_encoder = _IndividualEncoder(cfg)
        self.decoder = _Decoder(cfg)
        self.discriminator = _Discriminator(cfg)
        # linear probe on the class code, used by the optional "code_class" training loss
        self.class_code_head = nn.Linear(cfg.class_code_dim, cfg.num_classes)
        self.register_buffer("centroids", None, persistent=False)
        self.training_info: dict[str, Any] = {}

    @classmethod
    def from_config(cls, config: CaeConfig) -> ClassAssociationEmbedding:
        """A new (untrained) model with the architecture ``config``."""
        kwargs = {k: getattr(config, k) for k in config.__dataclass_fields__}
        for k in ("image_size", "in_channels", "num_classes", "class_code_dim"):
            kwargs.pop(k)
        kwargs["class_names"] = config.class_names or None
        return cls(
            config.image_size,
            config.in_channels,
            config.num_classes,
            config.class_code_dim,
            **kwargs,
        )

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` the model was built for."""
        return self.config.image_size

    @property
    def in_channels(self) -> int:
        """Number of image channels."""
        return self.config.in_channels

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.config.num_classes

    @property
    def class_code_dim(self) -> int:
        """Length of the class-associated code."""
        return self.config.class_code_dim

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names (``"0"``, ``"1"``, ... when none were given)."""
        return self.config.class_names or tuple(str(i) for i in range(self.num_classes))

    # ------------------------------------------------------------------ networks
    def check_images(self, x: Tensor, name: str = "inputs") -> None:
        """Raise if ``x`` is not an N×C×H×W float tensor matching this model, finite, in [0, 1]."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != 4:
            raise ValueError(
                f"{name} must be N×C×H×W (4-D), got shape {tuple(x.shape)}; {image_layout_hint(x)}."
            )
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}.")
        c, h, w = x.shape[1:]
        if c != self.in_channels:
            raise ValueError(
                f"{name} has {c} channels but this CAE was built for {self.in_channels}; "
                "convert the images or use a CAE trained on this kind of image."
            )
        if (h, w) != self.image_size:
            raise ValueError(
                f"{name} are {h}×{w} but this CAE was built for "
                f"{self.image_size[0]}×{self.image_size[1]}; resize the images first."
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values.")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(
                f"{name} must be scaled to [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); "
                "divide uint8 images by 255 and undo any normalisation."
            )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encode images in ``[0, 1]`` into ``(individual_code, class_code)``."""
        z = x * 2.0 - 1.0
        return self.individual_encoder(z), self.class_encoder(z)

    def encode_class(self, x: Tensor) -> Tensor:
        """Only the class-associated code (N×``class_code_dim``) of images in ``[0, 1]``."""
        return self.class_encoder(x * 2.0 - 1.0)

    def decode(self, individual_code: Tensor, class_code: Tensor) -> Tensor:
        """Decode codes into images in ``[0, 1]``."""
        return (self.decoder(individual_code, class_code) + 1.0) * 0.5

    def decode_with_mask(
        self, individual_code: Tensor, class_code: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Images in ``[0, 1]`` and the edit mask (``None`` unless ``class_edit_mask``)."""
        image, mask = self.decoder.forward_with_mask(individual_code, class_code)
        return (image + 1.0) * 0.5, mask

    def discriminate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Discriminator logits ``(real/fake N×2, class N×K)`` for images in ``[0, 1]``."""
        return self.discriminator(x * 2.0 - 1.0)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``G(Es(x), Ec(x))`` of images in ``[0, 1]``."""
        s, c = self.encode(x)
        return self.decode(s, c)

    def generator_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoders and the decoder (everything but the discriminator)."""
        mods = (self.class_encoder, self.individual_encoder, self.decoder, self.class_code_head)
        return [p for m in mods for p in m.parameters()]

    # ------------------------------------------------------------------ centroids
    def set_centroids(self, centroids: Tensor) -> None:
        """Set the per-class mean class codes (K×``class_code_dim``, finite)."""
        if centroids.shape != (self.num_classes, self.class_code_dim):
            raise ValueError(
                f"centroids must be {self.num_classes}×{self.class_code_dim}, "
                f"got {tuple(centroids.shape)}."
            )
        if not bool(torch.isfinite(centroids).all()):
            raise ValueError("centroids contain NaN or infinite values.")
        ref = next(self.parameters())
        self.centroids = centroids.detach().to(device=ref.device, dtype=ref.dtype).clone()

    @torch.no_grad()
    def compute_centroids(self, images: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
        """Compute, store and return the mean class code of each class.

        Args:
            images: N×C×H×W in ``[0, 1]``.
            labels: N integer labels in ``0..K-1``; every class must occur.
            batch_size: encoding batch size.
        """
        self.check_images(images, "images")
        labels = torch.as_tensor(labels).long().flatten()
        if labels.numel() != images.shape[0]:
            raise ValueError("images and labels must have the same length.")
        missing = sorted(set(range(self.num_classes)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no images; centroids need every class.")
        ref = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            codes = torch.cat(
                [
                    self.encode_class(images[i : i + batch_size].to(ref.device, ref.dtype)).cpu()
                    for i in range(0, images.shape[0], batch_size)
                ]
            )
        finally:
            self.train(was_training)
        cents = torch.stack([codes[labels == k].mean(0) for k in range(self.num_classes)])
        self.set_centroids(cents)
        return cents

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, include_discriminator: bool = True) -> tuple[Path, Path]:
        """Write ``<path>.safetensors`` (weights) and ``<path>.json`` (config, names, centroids).

        Args:
            path: checkpoint stem; a ``.safetensors`` or ``.json`` suffix is stripped.
            include_discriminator: also store the discriminator (needed to resume training,
                not to explain).

        Returns:
            The two paths written.
        """
        from safetensors.torch import save_file

        wpath, cpath = cae_paths(path)
        wpath.parent.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if include_discriminator or not k.startswith("discriminator.")
        }
        meta = {
            "format": _FORMAT,
            "version": str(_FORMAT_VERSION),
            "config_sha256": self.config.sha256(),
        }
        save_file(state, str(wpath), metadata=meta)
        wpath.chmod(0o644)  # safetensors creates 0600 files; package data must be readable
        doc: dict[str, Any] = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "config": self.config.to_json_dict(),
            "centroids": None if self.centroids is None else self.centroids.cpu().tolist(),
            "has_discriminator": include_discriminator,
            "training": self.training_info,
        }
        cpath.write_text(json.dumps(doc, indent=1))
        return wpath, cpath

    @classmethod
    def load(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> ClassAssociationEmbedding:
        """Load a checkpoint written by :meth:`save` (safetensors + JSON; never unpickles).

        Raises:
            FileNotFoundError: if either file is missing.
            ValueError: if the JSON is not a CAE config or does not match the weights
                (different hash, missing/unexpected tensors or shapes).
        """
        from safetensors import safe_open

        wpath, cpath = cae_paths(path)
        for p in (wpath, cpath):
            if not p.is_file():
                raise FileNotFoundError(
                    f"{p} not found; a CAE checkpoint is a pair <stem>.safetensors + <stem>.json "
                    "written by ClassAssociationEmbedding.save()."
                )
        try:
            doc = json.loads(cpath.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cpath} is not valid JSON: {err}") from err
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"{cpath} is not a captum_secam CAE config (missing format tag).")
        if doc.get("version") != _FORMAT_VERSION:
            raise ValueError(
                f"{cpath} has format version {doc.get('version')}, this library reads "
                f"{_FORMAT_VERSION}."
            )
        cfg = CaeConfig.from_json_dict(doc["config"])
        model = cls.from_config(cfg)
        with safe_open(str(wpath), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{wpath} is not a captum_secam CAE weights file.")
            # the hash of the config as stored: files from before a new option still match
            if meta.get("config_sha256") != _config_sha256(doc["config"]):
                raise ValueError(
                    f"{wpath} was saved with a different config than {cpath}; keep the "
                    ".safetensors and .json files of one save() together."
                )
            state = {k: f.get_tensor(k) for k in f.keys()}
        expected = model.state_dict()
        has_disc = bool(doc.get("has_discriminator", True))
        needed = {k for k in expected if has_disc or not k.startswith("discriminator.")}
        missing = sorted(needed - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"weights in {wpath} do not match the config in {cpath}: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}."
            )
        for k, v in state.items():
            if v.shape != expected[k].shape:
                raise ValueError(
                    f"tensor {k!r} in {wpath} has shape {tuple(v.shape)}, the config needs "
                    f"{tuple(expected[k].shape)}."
                )
        model.load_state_dict(state, strict=has_disc)
        cents = doc.get("centroids")
        if cents is not None:
            model.set_centroids(torch.tensor(cents, dtype=torch.float32))
        model.training_info = dict(doc.get("training") or {})
        model.eval()
        return model.to(map_location)

    def extra_repr(self) -> str:
        h, w = self.image_size
        return (
            f"image_size=({h}, {w}), in_channels={self.in_channels}, "
            f"num_classes={self.num_classes}, class_code_dim={self.class_code_dim}, "
            f"individual_code={self.individual_code_shape}"
        )

    @property
    def individual_code_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, h, w)`` of one individual code."""
        f = 2**self.config.n_downsample
        ch = self.config.base_channels * f
        return ch, self.image_size[0] // f, self.image_size[1] // f
