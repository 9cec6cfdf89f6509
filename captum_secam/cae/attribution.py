"""CAE counterfactual attribution: move the class code until the classifier's decision flips.

For an image ``x`` with codes ``(s, c) = E(x)`` (``s`` the spatial individual code, ``c`` the
class-associated code) and reconstruction ``x̂ = G(s, c)``, a path ``c(t)`` in class-code space is
walked from ``c(0) = c`` until the classifier ``f`` is *successfully* moved away from the
explained class ``y`` (the *target*). A path point ``c(t)`` is successful when

.. math::
    k(t) = \\arg\\max_j f_j(G(s, c(t))) \\ne y
    \\quad\\text{and}\\quad p_{k(t)}(G(s, c(t))) \\ge \\texttt{min\\_confidence},

with ``p`` the class probabilities (``softmax`` of the scores, or the scores themselves for
``scores="probabilities"``); ``min_confidence=None`` or ``0`` keeps only the first condition
(the plain decision flip). The paths, with the destination ``r`` = the class-code centroid
``μ_k`` of the counterfactual class ``k`` (default) or the class code ``E_c(x_ref)`` of a
user-given ``reference`` image:

* ``path="linear"`` (default, black-box: no gradient of ``f`` is used):
  ``c(t) = c + t·(r − c)`` sampled at ``t_j = t_end·j/n_steps``, ``j = 1..n_steps``
  (``t_end = 2`` by default, so the walk may extrapolate past ``r``);
* ``path="gradient"``: ``c_{j+1} = c_j − η·∇_c m / ‖∇_c m‖`` with the margin
  ``m(c) = log p_y(G(s, c)) − log p_k(G(s, c))`` and ``η = t_end·‖r − c‖ / n_steps``
  (``t_end = 3`` by default); ``c_j`` sits at position ``t_j = t_end·j/n_steps``.

The first successful point is refined by bisection (``refine_steps`` halvings) on the segment
between the last unsuccessful and the first successful point, keeping the successful end, so
the reported point ``t*`` always satisfies the criterion. With ``x_cf = G(s, c(t*))``:

.. math::
    A(x) = \\lvert x_{cf} - \\hat x \\rvert \\quad(\\texttt{compare\\_to="reconstruction"})
    \\qquad\\text{or}\\qquad \\lvert x_{cf} - x \\rvert \\quad(\\texttt{"input"}).

Comparing with the reconstruction keeps the CAE's reconstruction error out of the map.

A counterfactual can only explain a decision the reconstruction reproduces. With
``fit_steps > 0``, the individual code of an example whose reconstruction is not classified as
the target (while the input is) is fitted to the image, as in encoder-based GAN inversion: at
most ``fit_steps`` normalised gradient steps on ``s`` minimising
``L(s) = mean|G(s, c) − x|`` (``fit_objective="image"``, the default on the linear path: only
the decoder's gradients are used, so the explanation stays black-box) or
``L(s) = mean|G(s, c) − x| − 0.1·log p_y(G(s, c))`` (``"image_and_class"``, the default on the
gradient path),

.. math::
    s \\leftarrow s - \\lambda\\,\\sqrt{\\lvert s\\rvert}\\;\\nabla_s L / \\lVert\\nabla_s L\\rVert,
    \\qquad \\lambda = 0.05,

per example (the step depends only on that example's gradient direction), stopping for each
example as soon as ``f(G(s, c)) = y``. The class code is never changed by the fit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_secam._validation import (
    PREDICTED,
    check_model_output,
    explain_forward_error,
    resolve_targets,
)
from captum_secam.cae.model import ClassAssociationEmbedding

__all__ = ["CaeCounterfactual", "CaeExplanation"]

_FIT_LR = 0.05  # RMS step per entry of the individual code (entries are O(1) after InstanceNorm)
_FIT_CE_WEIGHT = 0.1  # the image term dominates: the fit stays a reconstruction
_FIT_OBJECTIVES = ("image", "image_and_class")
_PATHS = ("linear", "gradient")
_DEFAULT_T_END = {"linear": 2.0, "gradient": 3.0}
_SCORE_KINDS = ("logits", "probabilities")
_WARN_LEVEL = 4  # user -> log_usage wrapper -> attribute -> _warn_unexplained -> warn


class CaeExplanation(NamedTuple):
    """Everything :meth:`CaeCounterfactual.attribute` computes (``return_counterfactuals=True``).

    Images are on the input's device; per-example values and codes are on the CPU.

    Attributes:
        attributions: ``|counterfactual − reconstruction|`` (or ``− input``), shaped like the
            input, ``>= 0``.
        counterfactuals: the images at the reported point ``t*`` (at the path end where no
            point was successful).
        reconstructions: ``G(s, c)``, the decoded unchanged codes (with the fitted individual
            code where ``fitted``).
        flipped: bool per example: a successful point was found (prediction not the target,
            with probability ``>= min_confidence``). ``False`` also where the reconstruction
            was not classified as the target to begin with (see
            ``reconstruction_prediction``).
        flip_position: path position ``t*`` of the reported point, in units of the distance
            ``‖r − c‖`` to the destination code (``nan`` where not flipped).
        target: explained class per example.
        counterfactual_target: class moved toward per example.
        counterfactual_prediction: the classifier's prediction on ``counterfactuals``.
        reconstruction_prediction: the classifier's prediction on ``reconstructions``.
        class_codes: the original class codes ``c`` (N×D).
        counterfactual_codes: the class codes at the reported point (N×D).
        path_codes: the class codes visited, ``N×P×D`` (start, walked steps, refinements).
        decoder_passes: decoder passes spent per image.
        fitted: bool per example: the individual code was fitted because the encoder's
            reconstruction was not classified as the target (see ``fit_steps``).
        individual_codes: the individual codes ``s`` actually used (after any fit), N×C×h×w.
        counterfactual_probability: probability of ``counterfactual_prediction`` at the
            reported counterfactual (N).
    """

    attributions: Tensor
    counterfactuals: Tensor
    reconstructions: Tensor
    flipped: Tensor
    flip_position: Tensor
    target: Tensor
    counterfactual_target: Tensor
    counterfactual_prediction: Tensor
    reconstruction_prediction: Tensor
    class_codes: Tensor
    counterfactual_codes: Tensor
    path_codes: Tensor
    decoder_passes: int
    fitted: Tensor
    individual_codes: Tensor
    counterfactual_probability: Tensor


def _as_class_tensor(
    value: Any, n: int, num_classes: int, name: str, class_names: Sequence[str]
) -> Tensor | None:
    """Class indices per example (Captum's target reading; names via the CAE's class names).

    ``None`` (and ``"predicted"`` for ``target``) is resolved later from the predictions."""
    if value is None or (name == "target" and isinstance(value, str) and value == PREDICTED):
        return None
    names = class_names or None
    return resolve_targets(value, n, num_classes, name=name, class_names=names).cpu().clone()


def _put(dst: Tensor, mask: Tensor, src: Tensor) -> Tensor:
    """``src`` where the per-example ``mask`` holds, ``dst`` elsewhere (broadcast over rows)."""
    return torch.where(mask.reshape(-1, *([1] * (dst.dim() - 1))), src, dst)


def _indices(mask: Tensor) -> list[int]:
    return torch.nonzero(mask.cpu()).flatten().tolist()


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


def _check_options(
    path: str,
    compare_to: str,
    n_steps: int,
    refine_steps: int,
    fit_steps: int,
    t_end: float | None,
    min_confidence: float | None,
) -> tuple[float, float]:
    """Validate the walk options; return ``(t_end, min_confidence)`` with defaults filled in."""
    if path not in _PATHS:
        raise ValueError(f"path must be 'linear' or 'gradient', got {path!r}.")
    if compare_to not in ("reconstruction", "input"):
        raise ValueError(f"compare_to must be 'reconstruction' or 'input', got {compare_to!r}.")
    _check_int(n_steps, "n_steps", 1)
    _check_int(refine_steps, "refine_steps", 0)
    _check_int(fit_steps, "fit_steps", 0)
    if t_end is None:
        t_end = _DEFAULT_T_END[path]
    if isinstance(t_end, bool) or not isinstance(t_end, (int, float)):
        raise ValueError(f"t_end must be a finite number > 0, got {t_end!r}.")
    if not (math.isfinite(t_end) and t_end > 0):
        raise ValueError(f"t_end must be a finite number > 0, got {t_end!r}.")
    if min_confidence is None:
        return float(t_end), 0.0
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)):
        raise ValueError(
            f"min_confidence must be a float in [0, 1) or None, got {min_confidence!r}."
        )
    if not 0.0 <= min_confidence < 1.0:
        raise ValueError(
            f"min_confidence must be a float in [0, 1) or None, got {min_confidence!r}; "
            "None or 0 only asks the prediction to differ from the target."
        )
    return float(t_end), float(min_confidence)


def _check_differentiable(scores: Tensor, images: Tensor, what: str, fix: str) -> None:
    """Raise naming ``fix`` if ``scores`` do not depend on ``images`` via autograd."""
    ok = scores.requires_grad
    if ok:
        (g,) = torch.autograd.grad(scores.sum(), images, retain_graph=True, allow_unused=True)
        ok = g is not None
    if not ok:
        raise ValueError(
            f"{what} needs forward_func's scores to be differentiable with respect to the "
            "images (got scores without a gradient to them); make forward_func a torch "
            f"function of its input (no .detach(), numpy or no_grad inside) or {fix}."
        )


@dataclass
class _Problem:
    """The fixed inputs of one walk, on the CAE's device.

    ``live`` marks the examples whose reconstruction is classified as the target: only they
    are walked (the others cannot be explained by moving the class code).
    """

    s: Tensor
    c: Tensor
    dest: Tensor
    tgt: Tensor
    cft: Tensor
    live: Tensor
    fargs: Any
    min_conf: float

    @property
    def direction(self) -> Tensor:
        return self.dest - self.c

    @property
    def dist(self) -> Tensor:
        return self.direction.norm(dim=1).clamp_min(1e-12)

    def success(self, pred: Tensor, prob: Tensor) -> Tensor:
        return (pred != self.tgt) & (prob >= self.min_conf)


@dataclass
class _Point:
    """One path point per example: class code, position ``t``, image, prediction, probability."""

    code: Tensor
    pos: Tensor
    img: Tensor
    pred: Tensor
    prob: Tensor

    def where(self, mask: Tensor, other: _Point) -> _Point:
        """``other`` for the examples in ``mask``, ``self`` for the rest."""
        return _Point(
            _put(self.code, mask, other.code),
            _put(self.pos, mask, other.pos),
            _put(self.img, mask, other.img),
            _put(self.pred, mask, other.pred),
            _put(self.prob, mask, other.prob),
        )


@dataclass
class _Track:
    """Walk state per example.

    ``lo`` is the last unsuccessful point, ``hi`` the first successful one (the reported
    counterfactual of ``flipped`` examples), ``end`` the last point reached (reported where
    nothing was successful; the reconstruction for examples that are not walked).
    """

    lo: _Point
    hi: _Point
    end: _Point
    flipped: Tensor
    left: Tensor  # the prediction left the target somewhere (successfully or not)
    passes: int
    path: list[Tensor] = field(default_factory=list)

    @classmethod
    def start(cls, p: _Problem, recon: Tensor, pred: Tensor, prob: Tensor, passes: int) -> _Track:
        n = p.c.shape[0]
        zeros = torch.zeros(n, dtype=p.c.dtype, device=p.c.device)
        origin = _Point(p.c, zeros, recon, pred, prob)
        no_hi = _Point(p.c, torch.full_like(zeros, math.nan), recon, pred, prob)
        none = torch.zeros(n, dtype=torch.bool, device=p.c.device)
        return cls(origin, no_hi, origin, none, none, passes, [p.c])

    def open(self, p: _Problem) -> Tensor:
        """Examples still walking: explainable and not yet successful."""
        return p.live & ~self.flipped

    def reported(self) -> _Point:
        """The counterfactual of every example: ``hi`` where flipped, else the path end."""
        return self.end.where(self.flipped, self.hi)

    def record(self, p: _Problem, point: _Point) -> None:
        """Record one walked path point of every open example."""
        walking = self.open(p)
        ok = p.success(point.pred, point.prob)
        new, still = walking & ok, walking & ~ok
        self.left = self.left | (walking & (point.pred != p.tgt))
        self.hi = self.hi.where(new, point)
        self.lo = self.lo.where(still, point)
        self.end = self.end.where(still, point)
        self.flipped = self.flipped | new
        self.path.append(self.reported().code)

    def refine(self, p: _Problem, point: _Point) -> None:
        """Record one bisection midpoint of every flipped example: it replaces ``hi`` or ``lo``."""
        ok = p.success(point.pred, point.prob)
        self.hi = self.hi.where(self.flipped & ok, point)
        self.lo = self.lo.where(self.flipped & ~ok, point)
        self.path.append(self.reported().code)


class CaeCounterfactual(GradientAttribution):
    """Counterfactual saliency from a trained Class Association Embedding (arXiv 2406.07961).

    The class code ``c`` of each image is moved toward another class -- the class-code centroid
    of the nearest other class by default, or the class code of a ``reference`` image -- until
    ``forward_func`` predicts another class than ``target`` with probability at least
    ``min_confidence``; the attribution is where the decoded counterfactual differs from the
    reconstruction (see the module docstring for the formulas). The default linear path is
    black-box: it needs no gradient of ``forward_func``.

    Args:
        forward_func: the classifier, mapping N×C×H×W images in ``[0, 1]`` (the CAE's image
            space) to N×K scores for the CAE's K classes.
        cae: a trained :class:`ClassAssociationEmbedding` (with class-code centroids unless
            every call passes ``reference``).
        scores: what ``forward_func`` returns: ``"logits"`` (softmax gives the probabilities)
            or ``"probabilities"`` (used as they are; values must lie in ``[0, 1]``).

    Example:
        >>> from captum_secam.cae.fashion_mnist import load_pretrained, load_samples
        >>> classifier, cae = load_pretrained()
        >>> x, _ = load_samples()
        >>> explainer = CaeCounterfactual(classifier, cae)
        >>> res = explainer.attribute(x[:4], return_counterfactuals=True)
        >>> res.attributions.shape, res.flipped.shape, res.counterfactual_probability.shape
        (torch.Size([4, 1, 28, 28]), torch.Size([4]), torch.Size([4]))
    """

    def __init__(
        self,
        forward_func: Callable[..., Tensor],
        cae: ClassAssociationEmbedding,
        *,
        scores: str = "logits",
    ) -> None:
        if not isinstance(cae, ClassAssociationEmbedding):
            raise TypeError(f"cae must be a ClassAssociationEmbedding, got {type(cae).__name__}.")
        if scores not in _SCORE_KINDS:
            raise ValueError(f"scores must be 'logits' or 'probabilities', got {scores!r}.")
        GradientAttribution.__init__(self, forward_func)
        self.cae = cae
        self.scores = scores

    # ------------------------------------------------------------------ classifier
    def _forward(self, images: Tensor, additional_forward_args: Any) -> Tensor:
        """Call ``forward_func`` and check that it returns N×K scores."""
        extra = _format_additional_forward_args(additional_forward_args) or ()
        try:
            out = self.forward_func(images, *extra)
        except RuntimeError as err:
            clear = explain_forward_error(err, (images,))
            if clear is None:
                raise
            raise clear from err
        out = check_model_output(out, images.shape[0]) if not isinstance(out, Tensor) else out
        if out.dim() != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(
                "forward_func must return an N×K tensor of class scores, got "
                f"{getattr(out, 'shape', type(out))}."
            )
        if out.shape[1] != self.cae.num_classes:
            raise ValueError(
                f"forward_func returns {out.shape[1]} class scores but the CAE was trained on "
                f"{self.cae.num_classes} classes; use a CAE trained on the classifier's classes."
            )
        return out

    def _probabilities(self, scores: Tensor) -> Tensor:
        if self.scores == "logits":
            return torch.softmax(scores, 1)
        lo, hi = float(scores.detach().min()), float(scores.detach().max())
        if lo < -1e-4 or hi > 1 + 1e-4:
            raise ValueError(
                f"scores='probabilities' but forward_func returned values in [{lo:.3g}, "
                f"{hi:.3g}]; pass scores='logits' for unnormalised scores."
            )
        return scores

    def _log_probs(self, scores: Tensor) -> Tensor:
        if self.scores == "logits":
            return torch.log_softmax(scores, 1)
        return torch.log(self._probabilities(scores).clamp_min(1e-12))

    def _decide(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """Predicted class and its probability per example."""
        scores = scores.detach()
        pred = scores.argmax(1)
        prob = self._probabilities(scores).gather(1, pred[:, None])[:, 0]
        return pred, prob

    # ------------------------------------------------------------------ main entry
    @log_usage(part_of_slo=True)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | Sequence[int] | Tensor | str | tuple[int] | None = None,
        additional_forward_args: Any = None,
        counterfactual_target: int | Sequence[int] | Tensor | str | None = None,
        reference: Tensor | None = None,
        path: str = "linear",
        n_steps: int = 10,
        refine_steps: int = 6,
        t_end: float | None = None,
        min_confidence: float | None = 0.6,
        compare_to: str = "reconstruction",
        return_counterfactuals: bool = False,
        fit_steps: int = 30,
        fit_objective: str | None = None,
    ) -> Tensor | tuple[Tensor, ...] | CaeExplanation:
        """Explain ``target`` by the counterfactual that moves the classifier away from it.

        Args:
            inputs: N×C×H×W images in ``[0, 1]`` matching the CAE (channels, size), or a
                1-tuple holding them (the attributions are then returned as a 1-tuple).
            target: explained class per image, read as Captum reads it: an int (or a 1-tuple,
                or a 1-element tensor) for all, a list or 1-D tensor with one per image; a
                class name (or a list of names) when the CAE has ``class_names``. ``None`` or
                ``"predicted"`` (default): the class ``forward_func`` predicts for ``inputs``.
                Wrong targets raise :class:`~captum_secam.secam.TargetError` (a
                ``ValueError`` and an ``AssertionError``).
            additional_forward_args: extra arguments passed to ``forward_func`` after the
                images (a tuple is unpacked); they must fit a batch of N images.
            counterfactual_target: class to move toward (int, name, list or tensor, like
                ``target``); default: the class whose class-code
                centroid is nearest to the image's class code, excluding ``target`` -- or,
                with ``reference``, the class ``forward_func`` predicts for the reference.
            reference: N×C×H×W or 1×C×H×W images in ``[0, 1]`` (one is used for the whole
                batch) whose class codes are walked toward instead of the centroid (the
                authors' "hand-picked image of the other class").
            path: ``"linear"`` (default: straight line ``c + t·(r − c)``, needs no gradient
                of ``forward_func``) or ``"gradient"`` (normalised descent of the
                target-vs-counterfactual log-probability margin through the decoder; needs a
                differentiable ``forward_func``).
            n_steps: path points between the class code and position ``t_end``.
            refine_steps: bisection halvings between the last unsuccessful and the first
                successful point.
            t_end: how far the path goes, in units of the distance ``‖r − c‖`` (1 reaches the
                destination; larger values extrapolate beyond it). Default: 2 for the linear
                path, 3 for the gradient path (its steps are not aimed at ``r``).
            min_confidence: a point is successful when the prediction there is not ``target``
                and its probability is at least this (in ``[0, 1)``); ``None`` or ``0``: the
                prediction only has to differ from ``target``.
            compare_to: ``"reconstruction"`` (default) or ``"input"``.
            return_counterfactuals: return a :class:`CaeExplanation` instead of the map.
            fit_steps: at most this many (default 30) normalised gradient steps fitting the
                individual code of examples whose reconstruction is not classified as
                ``target`` while the input is (module docstring); each example stops as soon
                as it is. ``0`` skips the fit, the authors' procedure.
            fit_objective: what the fit minimises: ``"image"`` (``mean|G(s, c) − x|`` only,
                gradients of the decoder alone, so the explanation stays black-box; default
                on the linear path) or ``"image_and_class"`` (plus
                ``−0.1·log p_target(G(s, c))``, needs a differentiable ``forward_func``;
                default on the gradient path).

        Returns:
            The attributions (like ``inputs``), or a :class:`CaeExplanation`.

        One explanation costs at most ``1 + n_steps + refine_steps`` decoder passes per image
        (17 with the defaults; one more for ``path="gradient"``), plus ``fit_steps`` when some
        example needs the fit, fewer when every image succeeds early. Each example's walk,
        bisection and fit use only that example, so results do not depend on the batch up to
        floating-point rounding (which the gradient path can amplify where a ReLU input of
        the networks lies within rounding of 0). Images
        without a successful point are reported with a ``UserWarning`` and ``flipped=False``;
        their map is taken at the path end. Images whose reconstruction is not classified as
        ``target`` are reported too (moving the class code cannot explain a decision the CAE
        does not reproduce): ``flipped=False``, counterfactual = reconstruction, map all
        zeros. The fit only runs where ``forward_func`` predicts ``target`` on the input
        itself: a ``target`` the classifier did not choose is never "made up" by the fit.
        Works under ``torch.no_grad()``; no ``.grad`` is left on any parameter.
        """
        t_end_f, min_conf = _check_options(
            path, compare_to, n_steps, refine_steps, fit_steps, t_end, min_confidence
        )
        if fit_objective is None:
            fit_objective = "image" if path == "linear" else "image_and_class"
        if fit_objective not in _FIT_OBJECTIVES:
            raise ValueError(
                f"fit_objective must be one of {_FIT_OBJECTIVES}, got {fit_objective!r}."
            )
        x_in, is_tuple = self._check_inputs(inputs, reference)
        n, k_cls = x_in.shape[0], self.cae.num_classes
        names = self.cae.class_names
        tgt = _as_class_tensor(target, n, k_cls, "target", names)
        cft = _as_class_tensor(counterfactual_target, n, k_cls, "counterfactual_target", names)
        if tgt is not None and cft is not None and bool((tgt == cft).any()):
            raise ValueError(
                f"counterfactual_target equals target for examples {_indices(tgt == cft)}; "
                "choose another class to move toward (or leave it None for the nearest other "
                "class)."
            )
        param = next(self.cae.parameters())
        x = x_in.detach().to(param.device, param.dtype)
        ref = None if reference is None else reference.detach().to(param.device, param.dtype)
        was_training = self.cae.training
        self.cae.eval()
        try:
            p, track, recon, rec_pred, fitted = self._explain(
                x,
                tgt,
                cft,
                ref,
                additional_forward_args,
                path,
                n_steps,
                t_end_f,
                min_conf,
                fit_steps,
                fit_objective == "image_and_class",
            )
            self._bisect(p, track, refine_steps)
        finally:
            self.cae.train(was_training)
        res = self._assemble(x, p, track, recon, rec_pred, fitted, compare_to, x_in.device)
        self._warn_unexplained(res, track, path, t_end_f, min_confidence, fit_steps)
        if return_counterfactuals:
            return res
        return (res.attributions,) if is_tuple else res.attributions

    # ------------------------------------------------------------------ steps
    def _check_inputs(
        self, inputs: Tensor | tuple[Tensor, ...], reference: Tensor | None
    ) -> tuple[Tensor, bool]:
        """Check the images (and the reference images); return ``(images, was a tuple)``."""
        is_tuple = isinstance(inputs, tuple)
        if is_tuple:
            if len(inputs) != 1:
                raise ValueError(
                    "CaeCounterfactual explains one image tensor; pass a Tensor or a 1-tuple."
                )
            x_in = inputs[0]
        else:
            x_in = inputs  # type: ignore[assignment]
        self.cae.check_images(x_in)
        if reference is not None:
            self.cae.check_images(reference, "reference")
            if reference.shape[0] not in (1, x_in.shape[0]):
                raise ValueError(
                    f"reference holds {reference.shape[0]} images for a batch of "
                    f"{x_in.shape[0]} inputs; pass one reference image per input or a single "
                    "1×C×H×W image for the whole batch."
                )
        elif self.cae.centroids is None:
            raise ValueError(
                "the CAE has no class-code centroids; train it with train_cae(), call "
                "cae.compute_centroids(images, labels) first, or pass reference images."
            )
        return x_in, is_tuple

    def _explain(
        self,
        x: Tensor,
        tgt: Tensor | None,
        cft: Tensor | None,
        reference: Tensor | None,
        fargs: Any,
        path: str,
        n_steps: int,
        t_end: float,
        min_conf: float,
        fit_steps: int,
        fit_class: bool,
    ) -> tuple[_Problem, _Track, Tensor, Tensor, Tensor]:
        """Encode, resolve the targets, fit, and walk; the bisection is left to the caller."""
        with torch.no_grad():
            s, c = self.cae.encode(x)
            pred_x = self._forward(x, fargs).argmax(1)
        tgt = (pred_x if tgt is None else tgt).to(x.device)
        cft, dest = self._destination(c, tgt, cft, reference, fargs)
        # fit only where the classifier itself predicts the target on x: elsewhere the fit
        # would make up evidence for a class the model did not choose
        s, recon, rec_pred, rec_prob, fitted, passes = self._fit_individual(
            x, s, c, tgt, pred_x == tgt, fargs, fit_steps, fit_class
        )
        p = _Problem(s, c, dest, tgt, cft, rec_pred == tgt, fargs, min_conf)
        track = _Track.start(p, recon, rec_pred, rec_prob, passes)
        if bool(p.live.any()):
            walk = self._linear_walk if path == "linear" else self._gradient_walk
            walk(p, track, n_steps, t_end)
        return p, track, recon, rec_pred, fitted

    def _destination(
        self,
        c: Tensor,
        tgt: Tensor,
        cft: Tensor | None,
        reference: Tensor | None,
        fargs: Any,
    ) -> tuple[Tensor, Tensor]:
        """Resolve the counterfactual class ``k`` and the destination class code ``r``.

        ``r`` is the class code ``E_c(x_ref)`` of the reference images when given (``k``
        defaults to the classifier's prediction on them), else the centroid ``μ_k`` (``k``
        defaults to the nearest other-class centroid, ``argmin_{j≠y} ‖c − μ_j‖``).
        """
        with torch.no_grad():
            if reference is not None:
                ref = reference.expand(c.shape[0], -1, -1, -1)
                dest = self.cae.encode_class(ref)
                if cft is None:
                    cft = self._reference_class(ref, tgt, fargs)
            else:
                cents = self.cae.centroids
                assert cents is not None  # checked in _check_inputs
                cents = cents.to(c.device, c.dtype)
                if cft is None:
                    d = torch.cdist(c, cents)
                    d[torch.arange(c.shape[0], device=c.device), tgt] = math.inf
                    cft = d.argmin(1)
                dest = cents[cft.to(c.device)]
        cft = cft.to(c.device)
        if bool((tgt == cft).any()):  # user-given counterfactual_target, predicted target
            raise ValueError(
                f"counterfactual_target equals the predicted class (the default target) for "
                f"examples {_indices(tgt == cft)}; choose another class to move toward or pass "
                "target."
            )
        return cft, dest

    def _reference_class(self, ref: Tensor, tgt: Tensor, fargs: Any) -> Tensor:
        """The classifier's prediction on the reference images; it must not be the target."""
        cft = self._forward(ref, fargs).argmax(1)
        if bool((cft == tgt).any()):
            raise ValueError(
                f"the reference images of examples {_indices(cft == tgt)} are classified as the "
                "target class, so there is nothing to move toward; pass reference images of "
                "another class (or counterfactual_target)."
            )
        return cft

    def _fit_individual(
        self,
        x: Tensor,
        s: Tensor,
        c: Tensor,
        tgt: Tensor,
        eligible: Tensor,
        fargs: Any,
        fit_steps: int,
        fit_class: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, int]:
        """Decode the reconstruction; fit ``s`` of ``eligible`` examples not classified ``tgt``.

        Returns ``(s, reconstruction, its prediction, its probability, fitted flags, decoder
        passes)``; an example that cannot be fitted within ``fit_steps`` keeps the encoder's
        code. Without ``fit_steps`` nothing needs a gradient, and without ``fit_class`` the
        classifier is only ever called forward.
        """
        s_var = s.detach().clone().requires_grad_(fit_steps > 0)
        img, scores = self._fit_decode(s_var, c, fargs, fit_class)
        pred, prob = self._decide(scores)
        s_out, recon, rec_pred, rec_prob = s.detach(), img.detach(), pred, prob
        active = (pred != tgt) & eligible
        fitted = torch.zeros_like(active)
        passes = 1
        if fit_steps == 0 or not bool(active.any()):
            return s_out, recon, rec_pred, rec_prob, fitted, passes
        if fit_class:
            with torch.enable_grad():
                _check_differentiable(
                    scores, img, "fit_objective='image_and_class'", "use fit_objective='image'"
                )
        for _ in range(fit_steps):
            s_var = self._fit_step(x, s_var, img, scores, tgt, active, fit_class)
            img, scores = self._fit_decode(s_var, c, fargs, fit_class)
            passes += 1
            pred, prob = self._decide(scores)
            done = active & (pred == tgt)
            s_out, recon = _put(s_out, done, s_var.detach()), _put(recon, done, img.detach())
            rec_pred, rec_prob = _put(rec_pred, done, pred), _put(rec_prob, done, prob)
            fitted, active = fitted | done, active & ~done
            if not bool(active.any()):
                break
        return s_out, recon, rec_pred, rec_prob, fitted, passes

    def _fit_decode(
        self, s_var: Tensor, c: Tensor, fargs: Any, fit_class: bool
    ) -> tuple[Tensor, Tensor]:
        """Decode ``s_var`` (with a graph when it requires grad) and score the image; the
        classifier gets a graph only for the ``image_and_class`` objective."""
        with torch.set_grad_enabled(s_var.requires_grad):
            img = self.cae.decode(s_var, c)
        with torch.set_grad_enabled(fit_class and s_var.requires_grad):
            scores = self._forward(img if fit_class else img.detach(), fargs)
        return img, scores

    def _fit_step(
        self,
        x: Tensor,
        s_var: Tensor,
        img: Tensor,
        scores: Tensor,
        tgt: Tensor,
        active: Tensor,
        fit_class: bool,
    ) -> Tensor:
        """One per-example normalised gradient step ``s ← s − λ·√|s|·g/‖g‖`` of the fit loss."""
        with torch.enable_grad():
            loss = (img - x).abs().flatten(1).mean(1)
            if fit_class:
                class_term = -self._log_probs(scores).gather(1, tgt[:, None])[:, 0]
                loss = loss + _FIT_CE_WEIGHT * class_term
            (grad,) = torch.autograd.grad((loss * active).sum(), s_var)
        numel = grad[0].numel()
        gnorm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (_FIT_LR * math.sqrt(numel) / gnorm).reshape(-1, 1, 1, 1)
        moved = _put(s_var.detach(), active, s_var.detach() - scale * grad)
        return moved.requires_grad_(True)

    def _point(self, p: _Problem, code: Tensor, pos: Tensor, img: Tensor, scores: Tensor) -> _Point:
        """Package a decoded path point with the classifier's decision there."""
        pred, prob = self._decide(scores)
        return _Point(code.detach(), pos, img.detach(), pred, prob)

    def _linear_walk(self, p: _Problem, track: _Track, n_steps: int, t_end: float) -> None:
        """``c(t_j) = c + t_j·(r − c)``, ``t_j = t_end·j/n_steps``: no classifier gradient."""
        with torch.no_grad():
            for j in range(1, n_steps + 1):
                t = t_end * j / n_steps
                code = p.c + t * p.direction
                img = self.cae.decode(p.s, code)
                track.passes += 1
                pos = torch.full_like(track.lo.pos, t)
                track.record(p, self._point(p, code, pos, img, self._forward(img, p.fargs)))
                if not bool(track.open(p).any()):
                    break

    def _gradient_walk(self, p: _Problem, track: _Track, n_steps: int, t_end: float) -> None:
        """``c_{j+1} = c_j − η·∇m/‖∇m‖``, ``m = log p_y − log p_k``, ``η = t_end·‖r − c‖/n``."""
        eta = (t_end * p.dist / n_steps)[:, None]
        unit = p.direction / p.dist[:, None]
        rows = torch.arange(p.c.shape[0], device=p.c.device)
        code = p.c.clone()
        for j in range(n_steps + 1):
            with torch.enable_grad():
                cg = code.detach().requires_grad_(True)
                img = self.cae.decode(p.s, cg)
                scores = self._forward(img, p.fargs)
                track.passes += 1
                if j == 0:
                    _check_differentiable(scores, img, "path='gradient'", "use path='linear'")
                else:
                    pos = torch.full_like(track.lo.pos, t_end * j / n_steps)
                    track.record(p, self._point(p, code, pos, img, scores))
                    if j == n_steps or not bool(track.open(p).any()):
                        break
                logp = self._log_probs(scores)
                margin = logp[rows, p.tgt] - logp[rows, p.cft]
                (grad,) = torch.autograd.grad(margin.sum(), cg)
            gnorm = grad.norm(dim=1, keepdim=True)
            step = torch.where(gnorm > 0, grad / gnorm.clamp_min(1e-12), unit)
            code = _put(code, track.open(p), code - eta * step).detach()

    def _bisect(self, p: _Problem, track: _Track, refine_steps: int) -> None:
        """Halve ``[lo, hi]`` ``refine_steps`` times, keeping the successful end as ``hi``.

        The midpoint ``(lo + hi)/2`` (codes and positions) replaces ``hi`` where it is
        successful and ``lo`` where not, so ``hi`` always satisfies the success criterion and
        ``hi − lo`` halves each time.
        """
        if refine_steps == 0 or not bool(track.flipped.any()):
            return
        with torch.no_grad():
            for _ in range(refine_steps):
                code = 0.5 * (track.lo.code + track.hi.code)
                pos = 0.5 * (track.lo.pos + track.hi.pos)
                img = self.cae.decode(p.s, code)
                track.passes += 1
                track.refine(p, self._point(p, code, pos, img, self._forward(img, p.fargs)))

    def _assemble(
        self,
        x: Tensor,
        p: _Problem,
        track: _Track,
        recon: Tensor,
        rec_pred: Tensor,
        fitted: Tensor,
        compare_to: str,
        out_dev: torch.device,
    ) -> CaeExplanation:
        """Collect the reported counterfactuals (``hi`` where flipped, else the path end)."""
        cf = track.reported()
        base = recon if compare_to == "reconstruction" else x
        return CaeExplanation(
            attributions=(cf.img - base).abs().to(out_dev),
            counterfactuals=cf.img.to(out_dev),
            reconstructions=recon.to(out_dev),
            flipped=track.flipped.cpu(),
            flip_position=_put(torch.full_like(cf.pos, math.nan), track.flipped, cf.pos).cpu(),
            target=p.tgt.cpu(),
            counterfactual_target=p.cft.cpu(),
            counterfactual_prediction=cf.pred.cpu(),
            reconstruction_prediction=rec_pred.cpu(),
            class_codes=p.c.cpu(),
            counterfactual_codes=cf.code.cpu(),
            path_codes=torch.stack(track.path, 1).cpu(),
            decoder_passes=int(track.passes),
            fitted=fitted.cpu(),
            individual_codes=p.s.cpu(),
            counterfactual_probability=cf.prob.cpu(),
        )

    def _warn_unexplained(
        self,
        res: CaeExplanation,
        track: _Track,
        path: str,
        t_end: float,
        min_confidence: float | None,
        fit_steps: int,
    ) -> None:
        """Warn about reconstructions not showing the target and walks without success."""
        rec_bad = res.reconstruction_prediction != res.target
        if bool(rec_bad.any()):
            fix = "a larger fit_steps" if fit_steps else "fit_steps=30 (fits the individual code)"
            warnings.warn(
                f"CaeCounterfactual: the reconstructions of examples {_indices(rec_bad)} are not "
                f"classified as the target (after {fit_steps} fit steps), so the CAE does not "
                "reproduce the evidence to explain; they are flagged flipped=False and their "
                f"maps are not explanations. Try {fix} or a better-trained CAE.",
                UserWarning,
                stacklevel=_WARN_LEVEL,
            )
        unflipped = ~res.flipped & ~rec_bad
        left = track.left.cpu()
        never, weak = unflipped & ~left, unflipped & left
        if not bool(unflipped.any()):
            return
        parts = []
        if bool(never.any()):
            parts.append(
                f"the prediction never left the target class for examples {_indices(never)}"
            )
        if bool(weak.any()):
            parts.append(
                f"the prediction left the target class but never reached min_confidence="
                f"{min_confidence} for examples {_indices(weak)}"
            )
        hint = "path='gradient', " if path == "linear" else ""
        conf = "a lower min_confidence, " if bool(weak.any()) else ""
        warnings.warn(
            f"CaeCounterfactual: {'; '.join(parts)} (path={path!r}, t_end={t_end}); their maps "
            f"come from the path end and are flagged flipped=False. Try {conf}{hint}a larger "
            "t_end, or another counterfactual_target / reference.",
            UserWarning,
            stacklevel=_WARN_LEVEL,
        )
