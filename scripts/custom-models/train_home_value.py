"""Train the `@custom/home-value` example model and export it to ONNX.

The model is a scikit-learn LinearRegression on synthetic homes. The price follows a known
formula plus Gaussian noise, and the target is in millions of US dollars, so that float32
inference (ONNX Runtime) and float64 training (scikit-learn) agree to about 1e-7.

Outputs, in the output folder (default: models/custom of this checkout):
  home-value.onnx           float32 input `features` of shape [N, 6], output `price` [N, 1]
  home-value.onnx.sha256    SHA-256 of the .onnx file, in `sha256sum` format
  home-value.expected.json  feature names, test rows and scikit-learn's predictions for them

Usage: python train_home_value.py [OUTPUT_DIR]   (dependencies: requirements.txt)
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LinearRegression

FEATURES = ["sqft", "bedrooms", "bathrooms", "lot_size", "year_built", "walk_score"]
SEED = 20241204
TRAINING_ROWS = 2000
# Upper bound for the converter, which picks the lowest opset the graph needs (ai.onnx 9 and
# ai.onnx.ml 1 for this model with skl2onnx 1.17).
TARGET_OPSET = 13

TEST_ROWS = [
    [1800, 3, 2, 5000, 1995, 70],
    [950, 2, 1, 2500, 1962, 88],
    [3200, 5, 3.5, 12000, 2015, 35],
    [1400, 3, 1.5, 6500, 1978, 55],
    [2600, 4, 3, 8000, 2008, 62],
]


def generate_homes(rng: np.random.Generator, count: int) -> np.ndarray:
    """Draw `count` homes with plausible, loosely correlated features."""
    sqft = rng.uniform(600, 4000, count).round()
    bedrooms = np.clip((sqft / 700 + rng.normal(0, 0.7, count)).round(), 1, 6)
    bathrooms = np.clip((bedrooms * 0.6 + rng.normal(0, 0.5, count)) * 2, 2, 10).round() / 2
    lot_size = rng.uniform(1500, 20000, count).round(-1)
    year_built = rng.integers(1900, 2024, count).astype(float)
    walk_score = rng.integers(0, 101, count).astype(float)
    return np.column_stack([sqft, bedrooms, bathrooms, lot_size, year_built, walk_score])


def price_musd(homes: np.ndarray) -> np.ndarray:
    """Price in millions of US dollars, before noise."""
    sqft, bedrooms, bathrooms, lot_size, year_built, walk_score = homes.T
    dollars = (
        40_000
        + 150 * sqft
        + 8_000 * bedrooms
        + 12_000 * bathrooms
        + 3 * lot_size
        + 900 * (year_built - 1900)
        + 1_100 * walk_score
    )
    return dollars / 1e6


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    output_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "models" / "custom"
    output_dir.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    homes = generate_homes(rng, TRAINING_ROWS)
    prices = price_musd(homes) + rng.normal(0, 0.015, TRAINING_ROWS)
    model = LinearRegression().fit(homes, prices)
    print(f"R^2 on the training data: {model.score(homes, prices):.4f}")

    onnx_model = convert_sklearn(
        model,
        name="home-value",
        initial_types=[("features", FloatTensorType([None, len(FEATURES)]))],
        final_types=[("price", FloatTensorType([None, 1]))],
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 1},
    )
    onnx_model.doc_string = (
        "Synthetic home price in millions of USD from " + ", ".join(FEATURES)
    )
    # skl2onnx collects the opsets in a set, so sort them to make the file byte-reproducible.
    opsets = sorted(onnx_model.opset_import, key=lambda opset: opset.domain)
    del onnx_model.opset_import[:]
    onnx_model.opset_import.extend(opsets)
    onnx.checker.check_model(onnx_model)
    model_bytes = onnx_model.SerializeToString()

    test_rows = np.array(TEST_ROWS, dtype=np.float64)
    expected = model.predict(test_rows)
    # Check the exported graph against scikit-learn with onnx's reference evaluator, in the
    # float32 the node uses, before writing anything.
    (exported,) = ReferenceEvaluator(onnx_model).run(
        None, {"features": test_rows.astype(np.float32)}
    )
    error = np.abs(exported.ravel() - expected).max()
    if error > 1e-6:
        raise SystemExit(f"the ONNX graph differs from scikit-learn by {error}")

    onnx_path = output_dir / "home-value.onnx"
    onnx_path.write_bytes(model_bytes)
    digest = hashlib.sha256(model_bytes).hexdigest()
    (output_dir / "home-value.onnx.sha256").write_text(f"{digest}  home-value.onnx\n")
    expected_json = {
        "model": "@custom/home-value",
        "input_name": "features",
        "output_name": "price",
        "features": FEATURES,
        "unit": "millions of USD",
        "rows": TEST_ROWS,
        "predictions": expected.tolist(),
        "predicted_by": "scikit-learn LinearRegression (float64)",
    }
    (output_dir / "home-value.expected.json").write_text(json.dumps(expected_json, indent=2) + "\n")
    print(f"wrote {onnx_path} ({len(model_bytes)} bytes, SHA-256 {digest})")


if __name__ == "__main__":
    main()
