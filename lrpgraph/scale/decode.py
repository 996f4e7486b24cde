"""Images and masks of records turned into model inputs, with the preprocessing of lrpgraph.runtime.images.

A record's image is a file path, encoded bytes (PNG, JPEG, ... as a Parquet image column holds them) or a
decoded H x W (x C) uint8 array (as ray.data.read_images gives it); all three give the same float32
C x H x W array that runtime.images.load_image gives for the file. A failure is one LrpgraphError naming
the record's id.
"""

import io

import numpy as np
from PIL import Image

from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.images import image_mode, open_image, resize_and_crop, to_array
from lrpgraph.scale.store import is_uri, read_bytes

READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, TypeError)


def open_any(source: object, name: str, mode: str) -> Image.Image:
    """A PIL image in mode from a path, encoded bytes or a uint8 array; errors name the record."""
    if isinstance(source, str) and not is_uri(source):
        return open_image(source, mode)
    try:
        if isinstance(source, np.ndarray):
            array = source[:, :, 0] if source.ndim == 3 and source.shape[2] == 1 else source
            return Image.fromarray(np.asarray(array, dtype=np.uint8)).convert(mode)
        if source is None:
            raise ValueError("no image (the value is null)")
        if isinstance(source, str):  # a URI: its bytes from the object store
            source = read_bytes(source)
        with Image.open(io.BytesIO(bytes(source))) as image:
            image.seek(0)
            image.load()
            return image.convert(mode)
    except READ_ERRORS as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise LrpgraphError(f"cannot read image {name}: {reason}") from None


def load_input(source: object, name: str, preprocess: dict | None, input_shape: tuple) -> np.ndarray:
    """float32 C x H x W model input for one record's image."""
    image = resize_and_crop(open_any(source, name, image_mode(preprocess, input_shape)), preprocess, input_shape)
    array = to_array(image, preprocess)
    want = tuple(input_shape[1:])
    if any(w is not None and w != g for w, g in zip(want, array.shape[1:])):
        raise LrpgraphError(f"{name}: preprocessing gives {array.shape[1]}x{array.shape[2]} but the model takes "
                            f"{want[0]}x{want[1]}; fix resize/crop in the model's preprocess metadata")
    return array


def load_mask(source: object, name: str, preprocess: dict | None, input_shape: tuple) -> np.ndarray:
    """A boolean H x W mask (nonzero = foreground), resized and cropped as the images are."""
    gray = np.asarray(open_any(source, f"mask of {name}", "L"))
    binary = Image.fromarray(((gray > 0) * 255).astype(np.uint8))
    mask = np.asarray(resize_and_crop(binary, preprocess, input_shape)) >= 128
    if mask.shape != tuple(input_shape[1:]):
        raise LrpgraphError(f"the mask of {name} gives {mask.shape[0]}x{mask.shape[1]}, not the model's "
                            f"{input_shape[1]}x{input_shape[2]}")
    return mask


def black(preprocess: dict | None, input_shape: tuple) -> np.ndarray:
    """The model input value of a black pixel, per channel [C, 1, 1] (deletion's fill)."""
    return to_array(Image.new(image_mode(preprocess, input_shape), (1, 1)), preprocess)
