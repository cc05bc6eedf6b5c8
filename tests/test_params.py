from pathlib import Path

import pytest
import yaml

from icmflow.pipeline.params import ParamsError, load_params, parse_codec

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def defaults() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_project_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.train.dataset in params.datasets
    losses = {parse_codec(name).loss for name in params.codecs}
    assert losses == {"mse", "object"}


def test_codec_names_parse():
    codec = parse_codec("object-0.05")
    assert (codec.loss, codec.lmbda) == ("object", 0.05)
    assert parse_codec("mse-1e-3").lmbda == pytest.approx(0.001)
    for bad in ("object", "object-", "object0.05", "texture-0.1", "object-0"):
        with pytest.raises(ValueError):
            parse_codec(bad)


def test_misspelt_key_is_named(tmp_path, defaults):
    defaults["train"]["stpes"] = 10
    with pytest.raises(ParamsError, match=r"train\.stpes: unknown key"):
        load_params(write(tmp_path, defaults))


def test_every_problem_is_reported_at_once(tmp_path, defaults):
    defaults["train"]["steps"] = -1
    defaults["codecs"].append("texture-0.1")
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert "train.steps" in message and "-1" in message
    assert "unknown loss 'texture'" in message


def test_cross_references_are_checked(tmp_path, defaults):
    defaults["encode"]["dataset"] = "coco"
    with pytest.raises(ParamsError, match=r"encode\.dataset 'coco' is not under datasets"):
        load_params(write(tmp_path, defaults))


def test_duplicate_codec(tmp_path, defaults):
    defaults["codecs"].append(defaults["codecs"][0])
    with pytest.raises(ParamsError, match="listed twice"):
        load_params(write(tmp_path, defaults))


def test_unknown_codec_lookup():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ParamsError, match=r"not in params\.yaml codecs"):
        params.codec("object-123")


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_sam_is_off_by_default(defaults):
    params = load_params(REPO / "params.yaml")
    assert params.edges.datasets == [] and params.masks.source == "annotations"
    assert params.sam.checkpoint is None


def test_edge_codec_needs_edges_of_the_training_dataset(tmp_path, defaults):
    defaults["codecs"].append("edge-0.01")
    with pytest.raises(ParamsError, match=r"edges\.datasets does not list it: add it") as err:
        load_params(write(tmp_path, defaults))
    assert "edges: {datasets: [sample]}" in str(err.value)
    defaults["edges"]["datasets"] = ["sample"]
    defaults["sam"]["checkpoint"] = "models/sam/sam_vit_b_01ec64.pth"
    assert parse_codec("edge-0.01").loss == "edge"
    assert "edge-0.01" in load_params(write(tmp_path, defaults)).codecs


@pytest.mark.parametrize(
    ("section", "values", "user"),
    [
        ("edges", {"datasets": ["sample"]}, "edges.datasets ['sample']"),
        ("masks", {"source": "sam-boxes"}, "masks.source sam-boxes"),
    ],
)
def test_sam_users_need_a_checkpoint(tmp_path, defaults, section, values, user):
    defaults[section].update(values)
    defaults["sam"]["model_type"] = "vit_l"
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert f"{user} need Segment Anything, but sam.checkpoint is not set" in message
    assert "sam_vit_l_0b3195.pth" in message and "segment-anything#model-checkpoints" in message


def test_edges_of_unknown_datasets_and_bad_sam_settings(tmp_path, defaults):
    defaults["edges"]["datasets"] = ["coco"]
    defaults["sam"].update(checkpoint="sam.pth", model_type="vit_x", precision="half")
    with pytest.raises(ParamsError) as err:
        load_params(write(tmp_path, defaults))
    message = str(err.value)
    assert "sam.model_type" in message and "sam.precision" in message
    defaults["sam"].update(model_type="vit_b", precision="bfloat16")
    with pytest.raises(ParamsError, match=r"edges\.datasets lists \['coco'\], not under datasets"):
        load_params(write(tmp_path, defaults))
