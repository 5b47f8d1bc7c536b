"""Data loaders per modality, each ending in a `tf.data` pipeline."""

from kgen.data.errors import DataError
from kgen.data.images import MAX_DATA_BYTES
from kgen.data.images import ImageData
from kgen.data.images import check_labels
from kgen.data.images import image_datasets
from kgen.data.images import load_digits
from kgen.data.images import load_idx
from kgen.data.images import load_image_data
from kgen.data.images import load_image_folder
from kgen.data.images import load_images
from kgen.data.images import load_mnist
from kgen.data.images import load_npz
from kgen.data.images import to_unit_range
from kgen.data.text import TextData
from kgen.data.text import load_pydoc_text
from kgen.data.text import load_text
from kgen.data.text import text_datasets
from kgen.data.tokenizers import ByteTokenizer
from kgen.data.tokenizers import CharTokenizer
from kgen.data.tokenizers import make_tokenizer
