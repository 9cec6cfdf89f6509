"""CLI figure timings are warm: one untimed first call, then the median of a few."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from captum_secam import cli

needs_demo = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None,
    reason="needs the demo extra (pretrained EfficientNet-Lite0)",
)


class SlowFirstCall:
    """Takes 0.3 s the first time (a cold call) and ~1 ms afterwards."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        time.sleep(0.3 if self.calls == 1 else 0.001)
        return self.calls


def test_the_first_call_is_excluded_and_the_median_is_reported():
    call = SlowFirstCall()
    result, seconds = cli._time_warm(call, repeats=3)
    assert call.calls == 4  # one warm-up + three timed calls
    assert result == 4  # the last timed call's result
    assert 0.0005 < seconds < 0.1  # the 0.3 s cold call is not in the median


def test_a_separate_warm_up_replaces_the_first_call():
    call, warm = SlowFirstCall(), SlowFirstCall()
    _, seconds = cli._time_warm(call, repeats=1, warm_up=warm)
    assert (warm.calls, call.calls) == (1, 1)
    assert seconds > 0.25  # `call` itself was cold: a warm-up elsewhere does not hide it


@needs_demo
def test_explain_figure_says_the_first_call_is_excluded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from captum_secam import visualization

    seen: dict[str, Any] = {}
    real = visualization.plot_method_grid

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(visualization, "plot_method_grid", recording)
    code = cli.main(["explain", "chelsea", "--method", "secam", "--out", str(tmp_path / "t.png")])
    assert code == 0
    assert "first call excluded" in seen["suptitle"]
    assert "first call excluded" in capsys.readouterr().out
    seconds = seen["timings"]
    assert "SeCam" in seconds and "ms" in seconds["SeCam"]
    assert (tmp_path / "t.png").stat().st_size > 10_000
