"""Write crates/kiln/tests/data/row-sum.onnx, a stand-in for @custom/home-value in tests that
replace a model's files: the same input (`features`, float32 [N, 6]) and output (`price`,
float32 [N, 1]), but each prediction is the sum of its row, so a test can tell which of the
two models returned a prediction.

Run with the reference venv (scripts/reference/setup.sh): python make_row_sum.py
"""

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUTPUT = Path(__file__).resolve().parents[2] / "crates/kiln/tests/data/row-sum.onnx"


def main() -> None:
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])
    price = helper.make_tensor_value_info("price", TensorProto.FLOAT, [None, 1])
    # Opset 9 takes the reduced axes as an attribute (opset 18 moved them to an input).
    row_sum = helper.make_node("ReduceSum", ["features"], ["price"], axes=[1], keepdims=1)
    graph = helper.make_graph([row_sum], "row_sum", [features], [price])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, OUTPUT)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
