"""Proof that Redis and Triton are the real servers."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis

from testbed.triton_server import MODEL_PRELUDE, TritonServer


@pytest.mark.redis
def test_redis_hash_and_pipeline(redis_client: redis.Redis) -> None:
    redis_client.hset("user:1", mapping={"age": 31, "country": "PT"})
    assert redis_client.hget("user:1", "age") == b"31"
    pipe = redis_client.pipeline(transaction=False)
    for i in range(100):
        pipe.hset(f"item:{i}", "pop", i * i)
    pipe.hget("item:7", "pop")
    results = pipe.execute()
    assert results[-1] == b"49"
    assert redis_client.dbsize() == 101


@pytest.mark.redis
def test_each_test_gets_a_clean_database(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


DOUBLER = textwrap.dedent("""
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
                out = pb_utils.Tensor("Y", (x * 2.0 + 1.0).astype(np.float32))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            return responses
""")

CONFIG = textwrap.dedent("""
    name: "doubler"
    backend: "python"
    max_batch_size: 8
    input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
    output [ { name: "Y", data_type: TYPE_FP32, dims: [ 4 ] } ]
    instance_group [ { kind: KIND_CPU, count: 1 } ]
""")


@pytest.mark.triton
def test_triton_serves_a_python_backend_model(
    tmp_path: Path, start_triton: Callable[[Path], TritonServer]
) -> None:
    import tritonclient.http as httpclient

    model = tmp_path / "repo" / "doubler"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.py").write_text(MODEL_PRELUDE + DOUBLER)
    (model / "config.pbtxt").write_text(CONFIG)
    server = start_triton(tmp_path / "repo")

    client = httpclient.InferenceServerClient(url=server.http_url)
    assert client.is_model_ready("doubler")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("doubler", [inp], outputs=[httpclient.InferRequestedOutput("Y")])
    np.testing.assert_allclose(result.as_numpy("Y"), x * 2.0 + 1.0)
