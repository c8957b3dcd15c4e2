"""The SDK's shapes on this machine: notebook code runs offline end to end, the
documentation's Batch Transform call runs as written, and a Predictor speaks to a
deployed `serve`. Answers are compared with `o2v-batch transform`'s."""

from __future__ import annotations

import ast
import codecs
import io
import json
import logging
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import REPO
from processes import alive

from o2v_batch.errors import ConfigError, O2VError, OutputExistsError
from o2v_batch.sagemaker import (
    Estimator,
    InvocationError,
    JSONDeserializer,
    JSONLinesDeserializer,
    JSONLinesSerializer,
    JSONSerializer,
    Object2VecModel,
    Predictor,
    Transformer,
)
from o2v_batch.sagemaker import transformer as transformer_module
from o2v_batch.sagemaker.jobs import devices_for

MODEL = REPO / "examples" / "model"
REQUESTS = REPO / "examples" / "requests"
TRAIN = REPO / "examples" / "train"
JSON, JSONLINES = "application/json", "application/jsonlines"


def cli_transform(inputs: Path, output: Path, model: str | Path, *options: str) -> None:
    """`o2v-batch transform`, as a user runs it."""
    command = [sys.executable, "-m", "o2v_batch", "transform", str(inputs), str(output)]
    command += ["--model", str(model), "--no-progress", *options]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.out"))}


# -- instance types, arguments, channels (no job runs) ------------------------


@pytest.mark.parametrize(
    ("instance_type", "devices"),
    [
        ("local", "cpu"),
        ("local_gpu", "cuda"),
        ("ml.p2.xlarge", "auto"),  # every visible GPU, else the CPU
        ("ml.p4d.24xlarge", "auto"),
        ("ml.g5.2xlarge", "auto"),
        ("ml.g4ad.xlarge", "cpu"),  # AMD GPUs
        ("ml.m5.xlarge", "cpu"),
        ("ml.c5.large", "cpu"),
        ("ml.inf1.xlarge", "cpu"),
    ],
)
def test_instance_types_map_to_devices(instance_type, devices):
    assert devices_for(instance_type) == devices


@pytest.mark.parametrize("instance_type", ["p2.xlarge", "ml.p2", "", "gpu"])
def test_an_unknown_instance_type_is_refused_at_once(instance_type):
    with pytest.raises(ConfigError, match=r"is not local, local_gpu or ml\.<family>\.<size>"):
        Transformer(str(MODEL), 1, instance_type)


def test_aws_only_arguments_are_accepted_with_one_info_line(caplog):
    with caplog.at_level(logging.INFO, logger="o2v_batch.sagemaker"):
        Estimator(
            "123.dkr.ecr.us-east-1.amazonaws.com/object2vec:1",
            "arn:aws:iam::123:role/SageMaker",
            sagemaker_session=object(),
            volume_size=30,
            instance_type="ml.m5.xlarge",
        )
    assert [r.getMessage() for r in caplog.records] == [
        "Estimator: ignored on this machine (AWS only): image_uri, role, sagemaker_session, "
        "volume_size"
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: Object2VecModel(str(MODEL)).transformer(1, "local", max_paylod=1),
            "Transformer() got an unexpected keyword argument 'max_paylod' "
            "(did you mean max_payload?)",
        ),
        (
            lambda: Transformer(str(MODEL), stratgy="SingleRecord"),
            "Transformer() got an unexpected keyword argument 'stratgy' (did you mean strategy?)",
        ),
        (
            lambda: Transformer(str(MODEL)).transform("in/", overwite=True),
            "transform() got an unexpected keyword argument 'overwite' (did you mean overwrite?)",
        ),
        (
            lambda: Estimator(instance_typ="local"),
            "Estimator() got an unexpected keyword argument 'instance_typ' "
            "(did you mean instance_type?)",
        ),
        (
            lambda: Estimator().fit({"train": "t.jsonl"}, job_nam="x"),
            "fit() got an unexpected keyword argument 'job_nam' (did you mean job_name?)",
        ),
        (
            lambda: Object2VecModel(str(MODEL), envv={}),
            "Object2VecModel() got an unexpected keyword argument 'envv' (did you mean env?)",
        ),
        (
            lambda: Object2VecModel(str(MODEL)).deploy(1, "local", serialiser=None),
            "deploy() got an unexpected keyword argument 'serialiser' (did you mean serializer?)",
        ),
        (
            lambda: Predictor("http://127.0.0.1:1", deserialiser=None),
            "Predictor() got an unexpected keyword argument 'deserialiser' "
            "(did you mean deserializer?)",
        ),
        (
            lambda: Predictor("http://127.0.0.1:1").predict([], target_modle="m"),
            "predict() got an unexpected keyword argument 'target_modle' "
            "(did you mean target_model?)",
        ),
        (
            lambda: Transformer(str(MODEL), colour="blue"),
            "Transformer() got an unexpected keyword argument 'colour'",
        ),
    ],
)
def test_a_name_neither_the_sdk_nor_o2v_batch_knows_is_refused(call, message):
    """A misspelt argument would run with its default: refused before anything runs,
    naming the closest name the call knows (its own, or the SDK's)."""
    with pytest.raises(TypeError) as refused:
        call()
    assert str(refused.value) == message


def test_the_sdks_aws_only_names_of_a_transformer_are_accepted(caplog):
    """Those of the SDK's Transformer, Model.transformer and Estimator.transformer."""
    with caplog.at_level(logging.INFO, logger="o2v_batch.sagemaker"):
        Object2VecModel(str(MODEL)).transformer(
            1, "local", output_kms_key="k", tags=[], volume_kms_key="v", role="r"
        )
    assert [r.getMessage() for r in caplog.records] == [
        "Transformer: ignored on this machine (AWS only): output_kms_key, role, tags, "
        "volume_kms_key"
    ]


def test_transformer_arguments_map_onto_transforms_options(monkeypatch, tmp_path):
    taken = []
    monkeypatch.setattr(transformer_module.job, "transform", lambda c, log: taken.append(c))
    transformer = Object2VecModel(
        str(MODEL), env={"INFERENCE_PREFERRED_MODE": "embedding"}
    ).transformer(
        instance_count=4,
        instance_type="ml.p2.xlarge",
        strategy="SingleRecord",
        assemble_with="Line",
        accept=JSONLINES,
        max_concurrent_transforms=3,
        max_payload=1,
        output_path=str(tmp_path / "out"),
    )
    transformer.transform(
        str(tmp_path / "manifest.json"),
        data_type="ManifestFile",
        content_type=JSON,
        split_type="Line",
        input_filter="$.features",
        output_filter="$['id','SageMakerOutput']",
        join_source="Input",
        wait=False,
    )
    transformer.latest_transform_job.wait()
    (config,) = taken
    assert (config.input, config.output, config.model) == (
        str(tmp_path / "manifest.json"),
        str(tmp_path / "out"),
        str(MODEL),
    )
    assert (config.manifest, config.content_type, config.accept) == (True, JSON, JSONLINES)
    assert (config.strategy, config.max_payload, config.max_concurrent_transforms) == (
        "SingleRecord",
        1.0,
        3,
    )
    assert (config.mode, config.devices, config.join_source) == ("embedding", "auto", "Input")
    assert (config.input_filter, config.output_filter) == (
        "$.features",
        "$['id','SageMakerOutput']",
    )


def test_transformer_defaults_are_transforms_and_the_output_is_named_after_the_job(monkeypatch):
    taken = []
    monkeypatch.setattr(transformer_module.job, "transform", lambda c, log: taken.append(c))
    transformer = Transformer(str(MODEL))
    transformer.transform(str(REQUESTS), job_name="nightly-1", wait=False)
    transformer.latest_transform_job.wait()
    assert transformer.output_path == taken[0].output == "nightly-1"
    assert (taken[0].mode, taken[0].devices, taken[0].max_payload) == ("auto", "cpu", 6.0)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"split_type": "RecordIO"}, "split_type must be one of Line, None, None; got 'RecordIO'"),
        ({"data_type": "AugmentedManifestFile"}, "data_type must be one of S3Prefix, ManifestFile"),
        ({"compression_type": "Zip"}, "compression_type must be one of Gzip, None, None"),
    ],
)
def test_transform_refuses_what_object2vec_cannot_read(arguments, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Transformer(str(MODEL)).transform(str(REQUESTS), **arguments)


def test_a_bad_preferred_mode_names_its_variable():
    with pytest.raises(ConfigError, match="INFERENCE_PREFERRED_MODE must be one of"):
        Transformer(str(MODEL), env={"INFERENCE_PREFERRED_MODE": "vectors"})


def test_hyperparameters_are_kept_as_set():
    estimator = Estimator(hyperparameters={"enc0_max_seq_len": "20"})
    estimator.set_hyperparameters(enc0_vocab_size=100, epochs="3")
    assert estimator.hyperparameters() == {
        "enc0_max_seq_len": "20",
        "enc0_vocab_size": 100,
        "epochs": "3",
    }


def test_no_model_before_fit():
    with pytest.raises(O2VError, match=r"no model yet: call fit\(\) first"):
        _ = Estimator().model_data


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (None, 'fit needs a "train" channel'),
        (
            {"validation": str(TRAIN / "validation.jsonl")},
            'fit needs a "train" channel; got validation',
        ),
        ({"train": str(TRAIN)}, f"channel 'train': {TRAIN} holds 3 files; o2v-batch trains on one"),
    ],
)
def test_channels_that_are_not_one_file_each_are_refused(inputs, message):
    estimator = Estimator(hyperparameters={"enc0_max_seq_len": 5, "enc0_vocab_size": 10})
    with pytest.raises(ConfigError, match=message):
        estimator.fit(inputs)


# -- serializers ----------------------------------------------------------------


def test_serializers_make_request_bodies():
    data = {"instances": [{"in0": np.array([1, 2]), "in1": [np.int64(3)]}]}
    assert JSONSerializer().serialize(data) == b'{"instances":[{"in0":[1,2],"in1":[3]}]}'
    assert JSONSerializer.CONTENT_TYPE == JSON
    records = [{"in0": [1]}, {"in1": np.array([2, 3])}]
    assert JSONLinesSerializer().serialize(records) == b'{"in0":[1]}\n{"in1":[2,3]}\n'
    assert JSONLinesSerializer.CONTENT_TYPE == JSONLINES
    for serializer in (JSONSerializer(), JSONLinesSerializer()):
        assert serializer.serialize('{"in0": [1]}') == b'{"in0": [1]}'
        assert serializer.serialize(b"raw") == b"raw"
        assert serializer.serialize(io.BytesIO(b"file")) == b"file"


def test_deserializers_read_and_close_the_response():
    stream = io.BytesIO(b'{"predictions":[{"scores":[0.5,0.5]}]}\n')
    assert JSONDeserializer().deserialize(stream, JSON) == {"predictions": [{"scores": [0.5, 0.5]}]}
    assert stream.closed
    stream = io.BytesIO(b'{"embeddings":[1.0]}\n{"scores":[0.25]}\n')
    assert JSONLinesDeserializer().deserialize(stream, JSONLINES) == [
        {"embeddings": [1.0]},
        {"scores": [0.25]},
    ]
    assert stream.closed
    assert (JSONDeserializer.ACCEPT, JSONLinesDeserializer.ACCEPT) == ((JSON,), (JSONLINES,))


# -- whole jobs and endpoints ---------------------------------------------------


NOTEBOOK = """
    import json, sys
    from pathlib import Path

    import psutil

    from o2v_batch.sagemaker import Estimator, JSONLinesDeserializer, JSONLinesSerializer

    if __name__ == "__main__":
        train, validation, requests, out = sys.argv[1:]
        hyperparameters = json.loads(Path(sys.argv[1]).with_name("hyperparameters.json").read_text())
        o2v = Estimator(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/object2vec:1",
            "arn:aws:iam::123456789012:role/SageMakerRole",
            instance_count=1,
            instance_type="ml.m5.2xlarge",
            output_path=out + "/models",
            sagemaker_session=None,
        )
        o2v.set_hyperparameters(**{**hyperparameters, "epochs": "2"})
        o2v.fit({"train": train, "validation": validation})

        transformer = o2v.transformer(
            instance_count=1, instance_type="ml.m5.xlarge", output_path=out + "/batch"
        )
        transformer.transform(requests, content_type="application/jsonlines", split_type="Line")
        transformer.wait()
        outputs = {p.name: p.read_text() for p in sorted(Path(transformer.output_path).glob("*.out"))}

        predictor = o2v.deploy(
            initial_instance_count=1,
            instance_type="local",
            serializer=JSONLinesSerializer(),
            deserializer=JSONLinesDeserializer(),
        )
        records = [json.loads(line) for line in Path(requests, "pairs.jsonl").read_text().splitlines()]
        answers = predictor.predict(records)
        predictor.delete_endpoint()
        # Python's resource tracker stays until the script ends: it is no server or worker.
        left = [
            p.cmdline()
            for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())
        ]
        print(json.dumps({"model_data": o2v.model_data, "outputs": outputs, "answers": answers, "left": left}))
"""


@pytest.mark.slow
def test_a_notebook_runs_offline_end_to_end(tmp_path):
    """Estimator -> fit -> transformer -> transform -> the .out files; deploy -> predict ->
    delete_endpoint: the answers are `o2v-batch transform`'s on the same records."""
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(NOTEBOOK))
    requests = tmp_path / "requests"
    requests.mkdir()
    for name in ("documented.jsonl", "pairs.jsonl"):
        (requests / name).write_bytes((REQUESTS / name).read_bytes())
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            *map(str, (TRAIN / "train.jsonl", TRAIN / "validation.jsonl")),
            str(requests),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    # A progress line per epoch, and the model where SageMaker puts it.
    epochs = [line.split(":")[0] for line in run.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs == ["epoch 1/2", "epoch 2/2"]
    model_data = Path(result["model_data"])
    assert model_data.parts[-2:] == ("output", "model.tar.gz") and model_data.is_file()
    assert model_data.is_relative_to(tmp_path / "models")
    cli_transform(requests, tmp_path / "cli", model_data)
    cli = outputs(tmp_path / "cli")
    assert {name: text.encode() for name, text in result["outputs"].items()} == cli
    assert result["answers"] == [json.loads(line) for line in cli["pairs.jsonl.out"].splitlines()]
    assert result["left"] == []  # no server, no worker


@pytest.mark.slow
def test_the_documentations_transformer_call_runs_as_written(tmp_path):
    """The Object2Vec documentation's Batch Transform call, with a local model and folder:
    its outputs are those of `o2v-batch transform` with the same options."""
    output_s3_path = str(tmp_path / "batch")
    o2v = Object2VecModel(model_data=str(MODEL))
    transformer = o2v.transformer(instance_count=4, instance_type="ml.p2.xlarge", max_concurrent_transforms=2, max_payload=1, strategy='MultiRecord', env={'INFERENCE_PREFERRED_MODE': 'embedding'}, output_path=output_s3_path)  # fmt: skip
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("documented.jsonl", "documented.json"):
        (inputs / name).write_bytes((REQUESTS / name).read_bytes())
    transformer.transform(str(inputs), content_type=None, split_type="Line", wait=False)
    transformer.wait()
    assert transformer.summary.records_out == 6 and transformer.summary.shards_failed == 0
    cli_transform(inputs, tmp_path / "cli", MODEL, "--mode", "embedding", "--max-payload", "1")
    assert outputs(Path(output_s3_path)) == outputs(tmp_path / "cli")
    assert (Path(output_s3_path) / "_SUCCESS").is_file()


@pytest.mark.slow
def test_a_second_transform_is_refused_in_the_apis_words_until_told_what_to_do(tmp_path):
    """Run twice, as a notebook cell is: the error names transform()'s own arguments, and
    each of them does what it says."""
    out = tmp_path / "out"
    transformer = Object2VecModel(str(MODEL)).transformer(1, "local", output_path=str(out))
    data = str(REQUESTS / "documented.jsonl")
    transformer.transform(data)
    first = (out / "documented.jsonl.out").read_bytes()
    with pytest.raises(OutputExistsError) as refused:
        transformer.transform(data)
    assert str(refused.value) == (
        f"output already exists: {out / 'documented.jsonl.out'} "
        "(use resume=True to skip finished shards or overwrite=True to replace them)"
    )
    transformer.transform(data, resume=True)
    assert (transformer.summary.shards_ok, transformer.summary.shards_skipped) == (0, 1)
    transformer.transform(data, overwrite=True)
    assert (transformer.summary.shards_ok, transformer.summary.shards_skipped) == (1, 0)
    assert (out / "documented.jsonl.out").read_bytes() == first


class SdkShapedSerializer:
    """Shaped like sagemaker.serializers.JSONLinesSerializer: a str body."""

    CONTENT_TYPE = JSONLINES

    def serialize(self, data):
        return "".join(json.dumps(record) + "\n" for record in data)


class SdkShapedDeserializer:
    """Shaped like the SDK's deserializers: ACCEPT a tuple; reads the raw bytes."""

    ACCEPT = (JSONLINES,)

    def deserialize(self, stream, content_type):
        try:
            return content_type, codecs.getreader("utf-8")(stream).read().encode()
        finally:
            stream.close()


@pytest.mark.slow
def test_a_deployed_model_answers_as_transform_and_stops_without_a_trace(tmp_path):
    predictor = Object2VecModel(str(MODEL), env={"INFERENCE_PREFERRED_MODE": "embedding"}).deploy(
        1, "local", serializer=SdkShapedSerializer(), deserializer=SdkShapedDeserializer()
    )
    (server,) = [p for p in psutil.Process().children() if "serve" in p.cmdline()]
    assert f"--port {predictor.endpoint_name.rsplit(':', 1)[1]}" in " ".join(server.cmdline())
    processes = [server, *server.children(recursive=True)]
    try:
        records = [
            json.loads(line) for line in (REQUESTS / "documented.jsonl").read_text().splitlines()
        ]
        content_type, answer = predictor.predict(records)
        cli_transform(REQUESTS / "documented.jsonl", tmp_path / "cli", MODEL, "--mode", "embedding")
        assert (content_type, answer) == (
            JSONLINES,
            (tmp_path / "cli" / "documented.jsonl.out").read_bytes(),
        )
        # The embedding mode came from the model's env: a pair is a bad record, a 400.
        with pytest.raises(
            InvocationError,
            match=r'^the endpoint answered 400: line 1: record has both "in0" and "in1"',
        ):
            predictor.predict([{"in0": [1], "in1": [2]}])
        # initial_args set the Accept header, as with the SDK.
        content_type, answer = predictor.predict(records, initial_args={"Accept": JSON})
        assert content_type == JSON
        expected = [json.loads(line) for line in (tmp_path / "cli" / "documented.jsonl.out").open()]
        assert json.loads(answer) == {"predictions": expected}
        # Another Predictor attaches to the running endpoint by its URL.
        attached = Predictor(predictor.endpoint_name, serializer=JSONSerializer())
        assert attached.predict({"instances": records}) == {"predictions": expected}
    finally:
        predictor.delete_endpoint()
    assert alive(processes) == []


@pytest.mark.slow
def test_deploying_a_missing_model_fails_with_the_servers_message(tmp_path):
    with pytest.raises(O2VError, match=r"the endpoint did not start: Error: .*nowhere"):
        Object2VecModel(str(tmp_path / "nowhere")).deploy(1, "local")


@pytest.mark.slow
def test_the_sdks_own_serializers_work_when_installed():
    serializers = pytest.importorskip("sagemaker.serializers")
    deserializers = pytest.importorskip("sagemaker.deserializers")
    predictor = Object2VecModel(str(MODEL)).deploy(
        1,
        "local",
        serializer=serializers.JSONSerializer(),
        deserializer=deserializers.JSONDeserializer(),
    )
    try:
        records = [
            json.loads(line) for line in (REQUESTS / "documented.jsonl").read_text().splitlines()
        ]
        answer = predictor.predict({"instances": records})
    finally:
        predictor.delete_endpoint()
    assert [set(p) for p in answer["predictions"]] == [{"embeddings"}] * 3


def test_predictor_reports_an_unreachable_endpoint():
    with socket.socket() as probe:  # bound, never listening: nothing answers there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        with pytest.raises(InvocationError, match=f"cannot reach the endpoint {url}: "):
            Predictor(url).predict({"instances": []})


DOCUMENTED_CALL = (
    'transformer(instance_count=4, instance_type="ml.p2.xlarge", max_concurrent_transforms=2, '
    "max_payload=1, strategy='MultiRecord', env={'INFERENCE_PREFERRED_MODE': 'embedding'}, "
    "output_path=output_s3_path)"
)


@pytest.mark.slow
def test_the_readmes_notebook_runs_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From a SageMaker notebook", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert DOCUMENTED_CALL in code  # the documentation's call, character for character
    (tmp_path / "notebook.py").write_text(code)
    (tmp_path / "examples").symlink_to(REPO / "examples")  # run where a checkout's files are
    for _ in range(2):  # a notebook's cells run again, as the README says they can
        run = subprocess.run(
            [sys.executable, "notebook.py"], capture_output=True, text=True, cwd=tmp_path
        )
        assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[-2].startswith("notebook-out/models/object2vec-")
    assert lines[-2].endswith("/output/model.tar.gz")
    answers = ast.literal_eval(lines[-1])  # the printed list of responses
    assert [set(a) for a in answers] == [{"embeddings"}, {"scores"}]
    out = tmp_path / "notebook-out" / "embeddings"
    assert (out / "_SUCCESS").is_file()
    assert len((out / "documented.jsonl.out").read_text().splitlines()) == 3
