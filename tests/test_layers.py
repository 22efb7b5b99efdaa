"""Datasets sit on layers that follow the data, and kedro-viz draws the layer view."""

from __future__ import annotations

import logging

import pytest
from kedro.config import OmegaConfigLoader
from kedro.pipeline import Node

from tests.conftest import REPO
from tisynth.layers import LAYERS, LayerError, catalog_layers, check_layers, layer_edges, sort_layers

# the whole chain, top to bottom (model_output is not used: the segment node writes its
# evaluation tables beside the segmenters it trains, so nothing leads from models to them)
CHAIN = ["raw", "intermediate", "primary", "feature", "model_input", "models", "reporting"]


def _catalog(env: str, conf: str = str(REPO / "conf")) -> dict:
    return OmegaConfigLoader(conf_source=conf, base_env="base", default_run_env=env,
                             runtime_params={"dataset": {"root": "x"}})["catalog"]


def _f(*args):
    return None


def _node(inputs, outputs, name):
    return Node(_f, inputs, outputs, name=name)


@pytest.mark.parametrize("env", ["base", "folder", "sd15"])
def test_every_registered_pipeline_has_layers_that_follow_its_edges(env):
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(REPO)
    layers = catalog_layers(_catalog(env))
    assert check_layers(pipelines["__default__"].nodes, layers, total=True) == CHAIN
    for name, pipeline in pipelines.items():
        order = check_layers(pipeline.nodes, layers)
        assert order == [layer for layer in LAYERS if layer in order], name
    # what the stages make, stage by stage
    assert {layers[d] for d in ("generator", "synthetic_images", "real_segmenter", "class_losses")} == {"feature"}
    assert {layers[d] for d in ("filtered_synthetic", "segment_data")} == {"model_input"}
    assert {layers[d] for d in ("baseline_segmenter", "augmented_segmenter")} == {"models"}


def test_a_cycle_is_refused_with_the_datasets_that_make_it():
    # the layers of an earlier version: the generator's initial model on `models` feeds the latent
    # cache on `model_input`, and the segment data on `model_input` feed the segmenters on `models`
    layers = {"tiles": "intermediate", "generator_init": "models", "latent_cache": "model_input",
              "segment_data": "model_input", "segmenter": "models"}
    nodes = [_node("tiles", "generator_init", "init"), _node(["generator_init", "tiles"], "latent_cache", "cache"),
             _node("tiles", "segment_data", "prepare"), _node("segment_data", "segmenter", "train")]
    cycle = r"cycle, (models → model_input → models|model_input → models → model_input)"
    with pytest.raises(LayerError, match=cycle) as err:
        check_layers(nodes, layers)
    assert "generator_init (models) -[cache]-> latent_cache (model_input)" in str(err.value)
    assert "segment_data (model_input) -[train]-> segmenter (models)" in str(err.value)
    layers["generator_init"] = "model_input"
    assert check_layers(nodes, layers, total=True) == ["intermediate", "model_input", "models"]


def test_edges_against_the_order_unknown_layers_and_open_orders_are_refused():
    nodes = [_node("a", "b", "n1")]
    with pytest.raises(LayerError, match=r"against the layer order .*a \(primary\) -\[n1\]-> b \(raw\)"):
        check_layers(nodes, {"a": "primary", "b": "raw"})
    with pytest.raises(LayerError, match=r"without a layer .*b \(None\)"):
        check_layers(nodes, {"a": "primary"})
    with pytest.raises(LayerError, match=r"without a layer .*b \(gold\)"):
        check_layers(nodes, {"a": "primary", "b": "gold"})
    # parameters carry no layer; two layers that no data connect leave their order open
    apart = [_node(["a", "params:x"], "b", "n1"), _node("c", "d", "n2")]
    layers = {"a": "raw", "b": "primary", "c": "feature", "d": "reporting"}
    assert check_layers(apart, layers) == ["raw", "primary", "feature", "reporting"]
    with pytest.raises(LayerError, match="order is undefined"):
        check_layers(apart, layers, total=True)


def test_a_dataset_without_a_layer_is_looked_through():
    nodes = [_node("a", "m", "n1"), _node("m", "b", "n2")]
    edges = layer_edges(nodes, {"a": "model_input", "b": "primary"})
    assert [(e.source, e.target, e.node) for e in edges] == [("a", "b", "n2")]
    with pytest.raises(LayerError, match="cycle"):
        sort_layers([*edges, *layer_edges([_node("b", "c", "n3")], {"b": "primary", "c": "model_input"})])


def test_catalog_layers_reads_the_kedro_viz_metadata():
    layers = catalog_layers({"a": {"type": "x", "metadata": {"kedro-viz": {"layer": "raw"}}}, "b": {"type": "x"},
                             "_anchor": {"type": "x"}})
    assert layers == {"a": "raw", "b": None}


def _viz_layers(project, caplog) -> list[str]:
    """kedro-viz's own layer order of the default pipeline of ``project`` (what `kedro viz` draws)."""
    from kedro_viz.data_access import DataAccessManager
    from kedro_viz.integrations.kedro.data_loader import load_data
    from kedro_viz.server import populate_data

    catalog, pipelines, extras = load_data(project, package_name="tisynth")
    manager = DataAccessManager()
    populate_data(manager, catalog, pipelines, extras)
    with caplog.at_level(logging.WARNING, logger="kedro_viz.services.layers"):
        return manager.get_sorted_layers_for_registered_pipeline("__default__")


def test_kedro_viz_draws_the_layers_in_the_order_of_the_chain(kedro_project, caplog):
    from kedro.framework.project import pipelines

    assert _viz_layers(kedro_project, caplog) == CHAIN
    assert "Layers visualisation is disabled" not in caplog.text

    # the same check sees an initial generator put back on `models`: kedro-viz finds the cycle
    path = kedro_project / "conf/base/catalog_train_generator.yml"
    text = path.read_text()
    entry = text.index("generator_init:")
    cut = text.index("layer: feature", entry)
    path.write_text(text[:cut] + "layer: models" + text[cut + len("layer: feature"):])
    caplog.clear()
    assert _viz_layers(kedro_project, caplog) == []
    assert "Layers visualisation is disabled" in caplog.text
    with pytest.raises(LayerError, match="cycle"):
        check_layers(pipelines["__default__"].nodes, catalog_layers(_catalog("base", str(kedro_project / "conf"))))
