"""``exit_examples.png``: a legend says what the captions are, and white images stay visible in their frames."""

from __future__ import annotations

import numpy as np
from PIL import Image

from dvt_ms.inference.exit_examples import FRAME, LEGEND, THUMB, write_exit_examples
from dvt_ms.inference.plot import _font
from tests.helpers import REPO, load_config


def test_white_images_are_framed_and_the_legend_fits(tmp_path):
    white = str(tmp_path / "white.png")
    Image.new("RGB", (20, 20), "white").save(white)
    out = write_exit_examples(str(tmp_path / "ex.png"), [white, white], np.array([0, 1]), ["3 0.74", "1 0.91"],
                              [4, 8], per_exit=1)
    figure = np.asarray(Image.open(out).convert("RGB"))
    assert figure.shape[1] >= _font(12).getlength(LEGEND)  # the legend is not cut off, however few images a row
    framed = np.all(figure == FRAME, axis=-1)
    assert framed.sum() >= 2 * 4 * THUMB  # two frames of four sides around the white thumbnails
    assert "confidence" in LEGEND and "class" in LEGEND


def test_the_demo_config_does_not_write_over_the_demo_s_results():
    assert load_config(f"{REPO}/configs/dvt_digits_demo.yaml")["output_dir"] != "outputs/demo"
