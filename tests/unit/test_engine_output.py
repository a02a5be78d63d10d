"""The engine's images as the encoders receive them."""

import numpy as np
import torch

from kleinserve.engine.engine import _to_output


def test_uint8_images_are_c_contiguous_hxwx3_arrays():
    pixels = torch.rand(2, 3, 8, 5)
    arrays = _to_output(pixels, "uint8")
    assert [a.shape for a in arrays] == [(8, 5, 3), (8, 5, 3)]
    assert all(a.dtype == np.uint8 and a.flags.c_contiguous for a in arrays)
    expected = (pixels.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(np.stack(arrays), expected)
