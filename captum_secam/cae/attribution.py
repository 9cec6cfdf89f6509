"""CAE counterfactual attribution: move the class code until the classifier's decision flips.

For an image ``x`` with codes ``(s, c) = E(x)`` and reconstruction ``x̂ = G(s, c)``, a path
``c(t)`` in class-code space is walked from ``c(0) = c`` until the classifier ``f`` no longer
predicts the explained class ``y`` (the *target*):

* ``path="linear"``: ``c(t) = c + t·(μ_k − c)`` with ``μ_k`` the centroid of the counterfactual
  class ``k``; ``t`` is sampled at ``t_end·j/n_steps`` and the first flipped step is refined by
  bisection (``refine_steps`` halvings).
* ``path="gradient"``: ``c_{j+1} = c_j − η·∇_c m / ‖∇_c m‖`` with the margin
  ``m(c) = f_y(G(s, c)) − f_k(G(s, c))`` and ``η = t_end·‖μ_k − c‖ / n_steps``; the last step is
  refined by bisection on the segment ``[c_{j−1}, c_j]``.

With ``x_cf = G(s, c(t*))`` at the flip point ``t*``, the attribution is

.. math::
    A(x) = \\lvert x_{cf} - \\hat x \\rvert \\quad(\\texttt{compare\\_to="reconstruction"})
    \\qquad\\text{or}\\qquad \\lvert x_{cf} - x \\rvert \\quad(\\texttt{"input"}).

Comparing with the reconstruction keeps the CAE's reconstruction error out of the map.

A counterfactual can only explain a decision the reconstruction reproduces. When ``f(x̂)`` is not
the target (a blurry reconstruction of a short-trained CAE), the individual code of that example
is first fitted to the image, as in encoder-based GAN inversion: at most ``fit_steps`` Adam steps
(lr ``0.05``) on ``s`` minimising ``mean|G(s, c) − x| + 0.1·CE(f(G(s, c)), y)``, stopping for each
example as soon as ``f(G(s, c)) = y``. The class code is never changed by the fit, and examples
whose reconstruction already shows the target are left untouched.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor

from captum_secam._validation import resolve_targets
from captum_secam.cae.model import ClassAssociationEmbedding

__all__ = ["CaeCounterfactual", "CaeExplanation"]

_FIT_LR = 0.05  # Adam step on the individual code (its entries are O(1) after InstanceNorm)
_FIT_CE_WEIGHT = 0.1  # the image term dominates: the fit stays a reconstruction


class CaeExplanation(NamedTuple):
    """Everything :meth:`CaeCounterfactual.attribute` computes (``return_counterfactuals=True``).

    Attributes:
        attributions: ``|counterfactual − reconstruction|`` (or ``− input``), shaped like the
            input, ``>= 0``.
        counterfactuals: the images at the flip point (at the path end where nothing flipped).
        reconstructions: ``G(s, c)``, the decoded unchanged codes (with the fitted individual
            code where ``fitted``).
        flipped: bool per example; ``False`` means the prediction never left the target along
            the path, or the reconstruction was not classified as the target to begin with
            (see ``reconstruction_prediction``).
        flip_position: path position ``t*`` of the flip (distance travelled in class-code space
            divided by the distance to the counterfactual centroid; ``nan`` where not flipped).
        target: explained class per example.
        counterfactual_target: class moved toward per example.
        counterfactual_prediction: the classifier's prediction on ``counterfactuals``.
        reconstruction_prediction: the classifier's prediction on ``reconstructions``.
        class_codes: the original class codes ``c`` (N×D).
        counterfactual_codes: the class codes at the flip point (N×D).
        path_codes: the class codes visited, ``N×P×D`` (start, walked steps, refinements).
        decoder_passes: decoder passes spent per image.
        fitted: bool per example: the individual code was fitted because the encoder's
            reconstruction was not classified as the target (see ``fit_steps``).
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


def _as_class_tensor(value: Any, n: int, num_classes: int, name: str) -> Tensor | None:
    if value is None:
        return None
    return resolve_targets(value, n, num_classes, name=name).cpu().clone()


class CaeCounterfactual(GradientAttribution):
    """Counterfactual saliency from a trained Class Association Embedding (arXiv 2406.07961).

    The class code of each image is moved toward another class (the nearest other-class
    centroid by default) until ``forward_func`` no longer predicts ``target``; the attribution
    is where the decoded counterfactual differs from the reconstruction (see the module
    docstring for the formulas).

    Args:
        forward_func: the classifier, mapping N×C×H×W images in ``[0, 1]`` (the CAE's image
            space) to N×K scores (logits or probabilities) for the CAE's K classes.
        cae: a trained :class:`ClassAssociationEmbedding` with class-code centroids.

    Example:
        >>> from captum_secam.cae.fashion_mnist import load_pretrained, load_samples
        >>> classifier, cae = load_pretrained()
        >>> x, y = load_samples()
        >>> explainer = CaeCounterfactual(classifier, cae)
        >>> res = explainer.attribute(x[:4], return_counterfactuals=True)
        >>> res.attributions.shape, res.flipped.tolist()
        (torch.Size([4, 1, 28, 28]), [True, True, True, True])
    """

    def __init__(self, forward_func: Callable[..., Tensor], cae: ClassAssociationEmbedding) -> None:
        if not isinstance(cae, ClassAssociationEmbedding):
            raise TypeError(f"cae must be a ClassAssociationEmbedding, got {type(cae).__name__}.")
        GradientAttribution.__init__(self, forward_func)
        self.cae = cae

    # ------------------------------------------------------------------ helpers
    def _scores(self, images: Tensor, additional_forward_args: Any) -> Tensor:
        if additional_forward_args is None:
            out = self.forward_func(images)
        elif isinstance(additional_forward_args, tuple):
            out = self.forward_func(images, *additional_forward_args)
        else:
            out = self.forward_func(images, additional_forward_args)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != images.shape[0]:
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

    # ------------------------------------------------------------------ main entry
    @log_usage()
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: int | Sequence[int] | Tensor | None = None,
        counterfactual_target: int | Sequence[int] | Tensor | None = None,
        additional_forward_args: Any = None,
        path: str = "gradient",
        n_steps: int = 10,
        refine_steps: int = 6,
        t_end: float | None = None,
        compare_to: str = "reconstruction",
        return_counterfactuals: bool = False,
        fit_steps: int = 30,
    ) -> Tensor | tuple[Tensor, ...] | CaeExplanation:
        """Explain ``target`` by the counterfactual that flips the classifier's decision.

        Args:
            inputs: N×C×H×W images in ``[0, 1]`` matching the CAE (channels, size), or a
                1-tuple holding them (the attributions are then returned as a 1-tuple).
            target: explained class per image (int, list or tensor); default: the class
                ``forward_func`` predicts for ``inputs``.
            counterfactual_target: class to move toward; default: the class whose class-code
                centroid is nearest to the image's class code, excluding ``target``.
            additional_forward_args: extra arguments passed to ``forward_func`` after the
                images (a tuple is unpacked); they must fit a batch of N images.
            path: ``"gradient"`` (default: normalised descent of the target-vs-counterfactual
                margin through the decoder) or ``"linear"`` (straight line to the
                counterfactual centroid, the authors' walk). Both are refined by bisection. On
                the shipped Fashion-MNIST CAE the gradient path flips ~97 % of correctly
                classified test images, the linear one ~66 % (``docs/cae.md``).
            n_steps: path steps between the class code and ``t_end`` times the distance to the
                counterfactual centroid.
            refine_steps: bisection halvings of the flipped step.
            t_end: how far the path goes, in units of the distance to the centroid (1 stops at
                the centroid; larger values extrapolate beyond it). Default: 3 for the
                gradient path (its steps are not aimed at the centroid, so it needs room),
                1 for the linear path.
            compare_to: ``"reconstruction"`` (default) or ``"input"``.
            return_counterfactuals: return a :class:`CaeExplanation` instead of the map.
            fit_steps: at most this many steps fitting the individual code of examples whose
                reconstruction is not classified as ``target`` (module docstring); each
                example stops as soon as it is. ``0`` skips the fit (the authors' procedure).

        Returns:
            The attributions (like ``inputs``), or a :class:`CaeExplanation`.

        One explanation costs at most ``1 + n_steps + refine_steps`` decoder passes per image
        (one more for ``path="gradient"``: 18 with the defaults), plus ``fit_steps`` when some
        example needs the fit, fewer when every image flips or fits early. Images that
        never flip are reported with a ``UserWarning`` and ``flipped=False``; their map is taken
        at the path end. Images whose reconstruction is still not classified as ``target``
        after the fit are reported too (moving the class code cannot explain a decision the
        CAE does not reproduce): ``flipped=False``, counterfactual = reconstruction, map all
        zeros. The fit only runs where ``forward_func`` predicts ``target`` on the input
        itself: a ``target`` the classifier did not choose is never "made up" by the fit.
        """
        is_tuple = isinstance(inputs, tuple)
        if is_tuple:
            if len(inputs) != 1:
                raise ValueError(
                    "CaeCounterfactual explains one image tensor; pass a Tensor or a 1-tuple."
                )
            x_in = inputs[0]
        else:
            x_in = inputs  # type: ignore[assignment]
        cae = self.cae
        cae.check_images(x_in)
        if path not in ("linear", "gradient"):
            raise ValueError(f"path must be 'linear' or 'gradient', got {path!r}.")
        if compare_to not in ("reconstruction", "input"):
            raise ValueError(f"compare_to must be 'reconstruction' or 'input', got {compare_to!r}.")
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}.")
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}.")
        if isinstance(fit_steps, bool) or not isinstance(fit_steps, int) or fit_steps < 0:
            raise ValueError(f"fit_steps must be an int >= 0, got {fit_steps!r}.")
        if t_end is None:
            t_end = 3.0 if path == "gradient" else 1.0
        if not (isinstance(t_end, (int, float)) and math.isfinite(t_end) and t_end > 0):
            raise ValueError(f"t_end must be a finite number > 0, got {t_end!r}.")
        if cae.centroids is None:
            raise ValueError(
                "the CAE has no class-code centroids; train it with train_cae() or call "
                "cae.compute_centroids(images, labels) first."
            )
        n = x_in.shape[0]
        k_cls = cae.num_classes
        tgt = _as_class_tensor(target, n, k_cls, "target")
        cft = _as_class_tensor(counterfactual_target, n, k_cls, "counterfactual_target")
        if tgt is not None and cft is not None and bool((tgt == cft).any()):
            bad = torch.nonzero(tgt == cft).flatten().tolist()
            raise ValueError(
                f"counterfactual_target equals target for examples {bad}; choose another class "
                "to move toward (or leave it None for the nearest other class)."
            )

        param = next(cae.parameters())
        dev, dtype = param.device, param.dtype
        x = x_in.detach().to(dev, dtype)
        was_training = cae.training
        cae.eval()
        try:
            res = self._explain(
                x,
                tgt,
                cft,
                additional_forward_args,
                path,
                n_steps,
                refine_steps,
                float(t_end),
                fit_steps,
            )
        finally:
            cae.train(was_training)

        ref = res["reconstructions"] if compare_to == "reconstruction" else x
        attributions = (res["counterfactuals"] - ref).abs().to(x_in.device)
        flipped = res["flipped"]
        rec_bad = (res["rec_pred"] != res["target"]).cpu()
        if bool(rec_bad.any()):
            idx = torch.nonzero(rec_bad).flatten().tolist()
            warnings.warn(
                f"CaeCounterfactual: the reconstructions of examples {idx} are not classified as "
                f"the target (after {fit_steps} fit steps), so the CAE does not reproduce the "
                "evidence to explain; they are flagged flipped=False and their maps are not "
                "explanations. A larger fit_steps or a better-trained CAE may help.",
                UserWarning,
                stacklevel=3,
            )
        walked_bad = (~flipped.cpu()) & ~rec_bad
        if bool(walked_bad.any()):
            idx = torch.nonzero(walked_bad).flatten().tolist()
            hint = "path='gradient', " if path == "linear" else ""
            warnings.warn(
                f"CaeCounterfactual: the prediction never left the target class for examples "
                f"{idx} (path={path!r}, t_end={t_end}); their maps come from the path end and "
                f"are flagged flipped=False. Try {hint}a larger t_end or another "
                "counterfactual_target.",
                UserWarning,
                stacklevel=3,
            )
        if not return_counterfactuals:
            return (attributions,) if is_tuple else attributions
        out_dev = x_in.device
        return CaeExplanation(
            attributions=attributions,
            counterfactuals=res["counterfactuals"].to(out_dev),
            reconstructions=res["reconstructions"].to(out_dev),
            flipped=flipped.cpu(),
            flip_position=res["position"].cpu(),
            target=res["target"].cpu(),
            counterfactual_target=res["cf_target"].cpu(),
            counterfactual_prediction=res["cf_pred"].cpu(),
            reconstruction_prediction=res["rec_pred"].cpu(),
            class_codes=res["codes"].cpu(),
            counterfactual_codes=res["cf_codes"].cpu(),
            path_codes=res["path_codes"].cpu(),
            decoder_passes=int(res["passes"]),
            fitted=res["fitted"].cpu(),
        )

    # ------------------------------------------------------------------ core
    def _explain(
        self,
        x: Tensor,
        tgt: Tensor | None,
        cft: Tensor | None,
        fargs: Any,
        path: str,
        n_steps: int,
        refine_steps: int,
        t_end: float,
        fit_steps: int,
    ) -> dict[str, Any]:
        cae = self.cae
        n = x.shape[0]
        dev = x.device
        with torch.no_grad():
            s, c = cae.encode(x)
            pred_x = self._scores(x, fargs).argmax(1)
            tgt = (pred_x if tgt is None else tgt).to(dev)
        # fit only where the classifier itself predicts the target on x: elsewhere the fit
        # would make up evidence for a class the model did not choose
        s, recon, rec_pred, fitted, passes = self._fit_individual(
            x, s, c, tgt, pred_x == tgt, fargs, fit_steps, need_grad=path == "gradient"
        )
        with torch.no_grad():
            cents = cae.centroids
            assert cents is not None
            cents = cents.to(dev, c.dtype)
            if cft is None:
                d = torch.cdist(c, cents)
                d[torch.arange(n, device=dev), tgt] = math.inf
                cft = d.argmin(1)
            cft = cft.to(dev)
            if bool((tgt == cft).any()):  # user-given counterfactual_target, predicted target
                bad = torch.nonzero(tgt == cft).flatten().tolist()
                raise ValueError(
                    f"counterfactual_target equals the predicted class (the default target) for "
                    f"examples {bad}; choose another class to move toward or pass target."
                )
        ref_code = cents[cft]
        direction = ref_code - c
        dist = direction.norm(dim=1).clamp_min(1e-12)
        rows = torch.arange(n, device=dev)
        path_list = [c]

        # state: last not-flipped code (lo) and first flipped code (hi) per example
        lo_code = c.clone()
        lo_pos = torch.zeros(n, device=dev)
        hi_code = c.clone()
        hi_pos = torch.full((n,), math.nan, device=dev)
        hi_img = recon.clone()
        flipped = torch.zeros(n, dtype=torch.bool, device=dev)
        # an example whose reconstruction is already not classified as the target cannot be
        # explained by moving its class code: it is never counted as flipped
        rec_ok = rec_pred == tgt
        done = ~rec_ok
        end_img = recon.clone()
        end_code = c.clone()

        if path == "linear":
            with torch.no_grad():
                for j in range(1, n_steps + 1):
                    t = t_end * j / n_steps
                    code = c + t * direction
                    img = cae.decode(s, code)
                    passes += 1
                    pred = self._scores(img, fargs).argmax(1)
                    path_list.append(torch.where(flipped[:, None], hi_code, code))
                    new = (~flipped) & (pred != tgt) & rec_ok
                    hi_code[new], hi_img[new], hi_pos[new] = code[new], img[new], t
                    still = (~flipped) & ~new
                    lo_code[still], lo_pos[still] = code[still], t
                    flipped |= new
                    end_img, end_code = img, code
                    if bool((flipped | done).all()):
                        break
        else:
            eta = t_end * dist / n_steps
            code = c.clone()
            for j in range(0, n_steps + 1):
                with torch.enable_grad():
                    cg = code.detach().requires_grad_(True)
                    img = cae.decode(s, cg)
                    scores = self._scores(img, fargs)
                    passes += 1
                    if j > 0:
                        pred = scores.detach().argmax(1)
                        new = (~flipped) & (pred != tgt) & rec_ok
                        hi_code[new], hi_img[new] = code[new], img.detach()[new]
                        hi_pos[new] = (j * eta / dist)[new]
                        still = (~flipped) & ~new
                        lo_code[still] = code[still]
                        lo_pos[still] = (j * eta / dist)[still]
                        flipped |= new
                        end_img, end_code = img.detach(), code.clone()
                        path_list.append(torch.where(flipped[:, None], hi_code, code))
                        if bool((flipped | done).all()) or j == n_steps:
                            break
                    margin = scores[rows, tgt] - scores[rows, cft]
                    (grad,) = torch.autograd.grad(margin.sum(), cg)
                gnorm = grad.norm(dim=1, keepdim=True)
                step = torch.where(
                    gnorm > 0, grad / gnorm.clamp_min(1e-12), direction / dist[:, None]
                )
                moving = (~(flipped | done))[:, None]
                code = torch.where(moving, code - eta[:, None] * step, code)

        # bisection between lo (not flipped) and hi (flipped)
        if refine_steps > 0 and bool(flipped.any()):
            with torch.no_grad():
                a_code, a_pos = lo_code.clone(), lo_pos.clone()
                b_code, b_pos = hi_code.clone(), hi_pos.clone()
                for _ in range(refine_steps):
                    m_code = 0.5 * (a_code + b_code)
                    m_pos = 0.5 * (a_pos + b_pos)
                    img = cae.decode(s, m_code)
                    passes += 1
                    pred = self._scores(img, fargs).argmax(1)
                    flip_m = flipped & (pred != tgt)
                    keep_m = flipped & ~flip_m
                    b_code[flip_m], b_pos[flip_m], hi_img[flip_m] = (
                        m_code[flip_m],
                        m_pos[flip_m],
                        img[flip_m],
                    )
                    a_code[keep_m], a_pos[keep_m] = m_code[keep_m], m_pos[keep_m]
                    path_list.append(torch.where(flipped[:, None], b_code, end_code))
                hi_code, hi_pos = b_code, b_pos

        cf_img = torch.where(flipped[:, None, None, None], hi_img, end_img)
        cf_code = torch.where(flipped[:, None], hi_code, end_code)
        cf_img = torch.where(done[:, None, None, None], recon, cf_img)
        cf_code = torch.where(done[:, None], c, cf_code)
        with torch.no_grad():
            cf_pred = self._scores(cf_img, fargs).argmax(1)
        return {
            "counterfactuals": cf_img.detach(),
            "reconstructions": recon.detach(),
            "flipped": flipped,
            "position": torch.where(flipped, hi_pos, torch.full_like(hi_pos, math.nan)),
            "target": tgt,
            "cf_target": cft,
            "cf_pred": cf_pred,
            "rec_pred": rec_pred,
            "codes": c.detach(),
            "cf_codes": cf_code.detach(),
            "path_codes": torch.stack(path_list, 1).detach(),
            "passes": passes,
            "fitted": fitted,
        }

    def _fit_individual(
        self,
        x: Tensor,
        s: Tensor,
        c: Tensor,
        tgt: Tensor,
        eligible: Tensor,
        fargs: Any,
        fit_steps: int,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        """Fit ``s`` of the ``eligible`` examples whose reconstruction is not ``tgt``.

        Returns ``(s, reconstruction, its prediction, fitted flags, decoder passes)``; an
        example that cannot be fitted within ``fit_steps`` keeps the encoder's code. The first
        pass is the plain reconstruction; with ``need_grad`` it also checks that the scores are
        differentiable (the gradient path needs it) before any work is spent.
        """
        cae = self.cae
        if fit_steps == 0 and not need_grad:
            with torch.no_grad():
                recon = cae.decode(s, c)
                pred = self._scores(recon, fargs).argmax(1)
            return s, recon, pred, torch.zeros_like(pred, dtype=torch.bool), 1
        s_var = s.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([s_var], lr=_FIT_LR)
        with torch.enable_grad():
            img = cae.decode(s_var, c)
            scores = self._scores(img, fargs)
        passes = 1
        if need_grad:
            _check_differentiable(scores, img)
        pred = scores.detach().argmax(1)
        s_out, recon, rec_pred = s.clone(), img.detach().clone(), pred.clone()
        active = (pred != tgt) & eligible
        fitted = torch.zeros_like(active)
        for _ in range(fit_steps):
            if not bool(active.any()):
                break
            with torch.enable_grad():
                image_term = (img - x).abs().flatten(1).mean(1)
                class_term = F.cross_entropy(scores, tgt, reduction="none")
                per_example = image_term + _FIT_CE_WEIGHT * class_term
                (grad,) = torch.autograd.grad((per_example * active).sum(), s_var)
            s_var.grad = grad
            opt.step()
            s_var.grad = None
            with torch.enable_grad():
                img = cae.decode(s_var, c)
                scores = self._scores(img, fargs)
            passes += 1
            pred = scores.detach().argmax(1)
            done = active & (pred == tgt)
            s_out[done], recon[done], rec_pred[done] = (
                s_var.detach()[done],
                img.detach()[done],
                pred[done],
            )
            fitted |= done
            active &= ~done
        return s_out, recon, rec_pred, fitted, passes


def _check_differentiable(scores: Tensor, images: Tensor) -> None:
    """Raise the gradient path's error if ``scores`` do not depend on ``images`` via autograd."""
    ok = scores.requires_grad
    if ok:
        (g,) = torch.autograd.grad(scores.sum(), images, retain_graph=True, allow_unused=True)
        ok = g is not None
    if not ok:
        raise ValueError(
            "path='gradient' needs forward_func's scores to be differentiable with respect to "
            "the images (got scores without a gradient to them); make forward_func a torch "
            "function of its input (no .detach(), numpy or no_grad inside) or use path='linear'."
        )
