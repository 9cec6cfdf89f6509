"""Every ``Example:`` of the package's docstrings runs (the API reference pages show them).

Examples run in their module's namespace plus the package's top-level names, in a temporary
folder, with a few names the examples take as given (the Quick-start context of the docs):
``model`` (the pretrained EfficientNet-Lite0), ``photo`` (scikit-image's chelsea at
224×224), ``x`` (its model input), ``mask`` and ``secam``, a folder ``photos/`` of three
images, and the shipped ``coats`` CAE (``cae``, ``clf``). Lines marked ``# doctest: +SKIP``
(training runs) are not run. Outputs are not compared: the examples show calls, not printed
values. They take minutes, so they carry the ``docs`` marker and run in ``.ci/run``'s
documentation step.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import warnings
from pathlib import Path
from typing import Any

import pytest

import captum_secam

pytestmark = pytest.mark.docs


def _documented_objects() -> list[tuple[str, Any, str]]:
    found = []
    for info in pkgutil.walk_packages(captum_secam.__path__, "captum_secam."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        candidates = [(info.name, module)] + [
            (f"{info.name}.{name}", obj)
            for name, obj in vars(module).items()
            if (inspect.isclass(obj) or inspect.isfunction(obj))
            and getattr(obj, "__module__", None) == module.__name__
        ]
        for name, obj in candidates:
            doc = obj.__doc__  # its own docstring, not one inherited from a base class
            if doc and ">>>" in doc:
                found.append((name, module, doc))
    return found


OBJECTS = _documented_objects()


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import numpy as np
    import skimage.data
    import skimage.io
    import torch
    import torchvision

    from captum_secam.cae.fashion_mnist import load_pretrained
    from captum_secam.demo_model import load_efficientnet_lite0, preprocess_photo, resize_photo

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("examples")
    (folder / "photos").mkdir()
    photo = resize_photo(skimage.data.chelsea())  # at the model's input size, like ``x``
    for i in range(3):
        crop = photo[20 * i : 20 * i + 160, 30 * i : 30 * i + 180]
        skimage.io.imsave(folder / "photos" / f"{i}.png", crop)
    model = load_efficientnet_lite0()
    x = preprocess_photo(photo)
    clf, cae = load_pretrained("coats")
    names = {name: getattr(captum_secam, name) for name in captum_secam.__all__}
    return {
        **names,
        "torch": torch,
        "torchvision": torchvision,
        "np": np,
        "model": model,
        "photo": photo,
        "x": x,
        "mask": captum_secam.segment(x, n_segments=50),
        "secam": captum_secam.SeCam(model, model._bn1),
        "clf": clf,
        "cae": cae,
        "folder": folder,
    }


@pytest.mark.parametrize(("name", "module", "doc"), OBJECTS, ids=[o[0] for o in OBJECTS])
def test_docstring_example_runs(
    name: str, module: Any, doc: str, context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(context["folder"])
    namespace = {**vars(module), **context}
    examples = doctest.DocTestParser().get_examples(doc)
    assert examples, f"{name}: '>>>' in the docstring but no example parsed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for example in examples:
            if example.options.get(doctest.SKIP):
                continue
            exec(compile(example.source, f"<{name} example>", "exec"), namespace)


def test_the_examples_are_found() -> None:
    names = {o[0] for o in OBJECTS}
    assert {"captum_secam.secam.SeCam", "captum_secam.cae.attribution.CaeCounterfactual"} <= names
    assert len(OBJECTS) >= 30
    assert all(Path(inspect.getfile(o[1])).suffix == ".py" for o in OBJECTS)
