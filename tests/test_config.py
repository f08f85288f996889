from pathlib import Path

import pytest

from tasks.core import paths
from tasks.core.config import PipelineConfig, load_config
from tasks.core.errors import ConfigError


def test_demo_config_loads_with_its_values():
    cfg = load_config(paths.DEMO_CONFIG)
    assert cfg.model.pretrained is None
    assert cfg.validation.max_length == 128
    assert cfg.sft.lora.enabled is False


def test_overrides_are_typed_and_nested():
    cfg = load_config(paths.DEMO_CONFIG, ["sft.learning_rate=0.01", "sft.lora.enabled=true", "name=x"])
    assert cfg.sft.learning_rate == 0.01
    assert cfg.sft.lora.enabled is True
    assert cfg.name == "x"


@pytest.mark.parametrize(
    ("override", "key"),
    [("sft.lerning_rate=1", "sft.lerning_rate"), ("sft.lora.rank=4", "sft.lora.rank"), ("bogus=1", "bogus"),
     ("safe_ppo.cost_limt=1", "safe_ppo.cost_limt")],
)
def test_unknown_key_names_its_path(override, key):
    with pytest.raises(ConfigError, match=rf"key '{key}': unknown key"):
        load_config(paths.DEMO_CONFIG, [override])


@pytest.mark.parametrize(
    ("override", "key"),
    [("sft.learning_rate=fast", "sft.learning_rate"), ("sft.batch_size=0", "sft.batch_size"),
     ("validation.on_failure=ignore", "validation.on_failure"), ("safe_ppo.lambda_lr=0", "safe_ppo.lambda_lr"),
     ("safe_ppo.lambda_init=-1", "safe_ppo.lambda_init"), ("optimizers=[ppo,safe_rlhf]", "optimizers.1")],
)
def test_bad_value_names_its_path(override, key):
    with pytest.raises(ConfigError, match=rf"key '{key}'"):
        load_config(paths.DEMO_CONFIG, [override])


def test_unknown_key_in_yaml_file_names_file_and_path(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  epochs: 2\n  optimizer: sgd\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: key 'sft.optimizer': unknown key"):
        load_config(bad)


def test_override_without_equals_sign_is_rejected():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(paths.DEMO_CONFIG, ["sft.epochs"])


def test_max_length_cannot_exceed_tiny_model_positions():
    with pytest.raises(ConfigError, match="exceeds model.tiny.max_position_embeddings"):
        load_config(paths.DEMO_CONFIG, ["validation.max_length=512"])


def test_ranking_cut_short_answers_without_hard_negatives_is_refused():
    with pytest.raises(ConfigError, match="rank_cut_short.*needs hard_negatives"):
        load_config(paths.DEMO_CONFIG, ["reward.hard_negatives=false", "reward.rank_cut_short=true"])


def test_safe_ppo_is_an_optimizer_whose_lambda_starts_under_its_ceiling():
    cfg = load_config(paths.DEMO_CONFIG, ["optimizers=[dpo,ppo,rloo,safe_ppo]", "safe_ppo.cost_limit=-0.5"])
    assert cfg.optimizers[-1] == "safe_ppo" and cfg.safe_ppo.cost_limit == -0.5
    with pytest.raises(ConfigError, match=r"key 'safe_ppo'.*lambda_max \(0.5\) is below lambda_init \(1.0\)"):
        load_config(paths.DEMO_CONFIG, ["safe_ppo.lambda_max=0.5"])


def test_ppo_batch_must_hold_whole_groups_of_answers_per_prompt():
    with pytest.raises(ConfigError, match=r"rollout_batch_size \(8\) must be a multiple of samples_per_prompt \(3\)"):
        load_config(paths.DEMO_CONFIG,
                    ["ppo.rollout_batch_size=8", "ppo.mini_batch_size=4", "ppo.samples_per_prompt=3"])


def test_section_hash_tracks_only_the_named_sections():
    base = PipelineConfig()
    changed = PipelineConfig.model_validate({"sft": {"epochs": 9}})
    assert base.section_hash("eval") == changed.section_hash("eval")
    assert base.section_hash("sft") != changed.section_hash("sft")
    assert base.section_hash() != changed.section_hash()


def test_flat_params_use_dotted_keys():
    params = PipelineConfig().flat_params()
    assert params["sft.lora.r"] == "8"
    assert params["model.tiny.hidden_size"] == "64"


def test_a_threshold_gate_needs_a_bound(tmp_path: Path):
    bad = tmp_path / "gates.yaml"
    bad.write_text("gates:\n  thresholds:\n    - {metric: eval/perplexity}\n")
    with pytest.raises(ConfigError, match=r"key 'gates.thresholds.0': .*needs a min or a max"):
        load_config(bad)


def test_a_config_extends_its_base_with_nested_overrides(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("name: base\nsft:\n  epochs: 5\n  learning_rate: 0.01\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nname: child\nsft:\n  epochs: 2\n")
    cfg = load_config(tmp_path / "child.yaml")
    # the child's keys win, the base's other keys in the same section survive
    assert (cfg.name, cfg.sft.epochs, cfg.sft.learning_rate) == ("child", 2.0, 0.01)


def test_extends_loops_are_reported(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="'extends' loops back"):
        load_config(tmp_path / "a.yaml")




def test_extends_works_for_every_schema(tmp_path: Path):
    from tasks.cai.config import load_cai_config
    from tasks.world.catalogue import catalogue_sha256, load_catalogue

    # A CAI config two lines over the demo's: the child wins, the rest comes from the base.
    (tmp_path / "cai.yaml").write_text(f"extends: {paths.CAI_DIR / 'demo.yaml'}\nseed: 7\n")
    base, child = load_cai_config(paths.CAI_DIR / "demo.yaml"), load_cai_config(tmp_path / "cai.yaml")
    assert child.seed == 7 and child.model_copy(update={"seed": base.seed}) == base
    # A world catalogue over the SmolLM2 one: same sub-categories, other held-out phrasings.
    world = paths.WORLDS_DIR / "safety.yaml"
    (tmp_path / "world.yaml").write_text(f"extends: {world}\nphrasings:\n  held_out: ['{{request}} Briefly.']\n")
    variant = load_catalogue(tmp_path / "world.yaml")
    assert variant.phrasings.held_out == ["{request} Briefly."]
    assert variant.phrasings.train == load_catalogue(world).phrasings.train
    # Its hash is of the resolved catalogue: a change to the file it extends changes it too.
    (tmp_path / "parent.yaml").write_text(world.read_text())
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\n")
    before = catalogue_sha256(tmp_path / "child.yaml")
    assert before == catalogue_sha256(world)  # the same catalogue, whichever file holds it
    (tmp_path / "parent.yaml").write_text(world.read_text().replace("Keep it brief.", "Be brief."))
    assert catalogue_sha256(tmp_path / "child.yaml") != before
    with pytest.raises(ConfigError, match="safety world file .*missing.yaml does not exist"):
        load_catalogue(tmp_path / "missing.yaml")


def test_each_config_folder_holds_one_schema_and_references_run_one_way(tmp_path: Path):
    from tasks.cai.config import load_cai_config
    from tasks.world.catalogue import load_catalogue

    loaders = {paths.PIPELINES_DIR: load_config, paths.CAI_DIR: load_cai_config, paths.WORLDS_DIR: load_catalogue}
    for folder, load in loaders.items():
        files = sorted(folder.glob("*.yaml"))
        assert files, folder
        for path in files:
            load(path)  # each file is of its folder's schema
    # Pipelines name their CAI config and world; nothing names a pipeline back.
    for path in paths.PIPELINES_DIR.glob("*.yaml"):
        cfg = load_config(path)
        assert cfg.cai.config is None or Path(cfg.cai.config).parent.name == "cai", path
        assert Path(cfg.world.catalogue).parent.name == "worlds", path
    (tmp_path / "loop.yaml").write_text(f"extends: {paths.CAI_DIR / 'demo.yaml'}\npipeline_config: x.yaml\n")
    with pytest.raises(ConfigError, match="key 'pipeline_config': unknown key"):
        load_cai_config(tmp_path / "loop.yaml")


@pytest.mark.parametrize(("overrides", "trains"), [
    (["optimizers=[dpo]"], False),  # DPO reads preferences, never the reward model
    (["optimizers=[]"], False),
    (["optimizers=[dpo,rloo]"], True),
    (["optimizers=[safe_ppo]"], True),
    (["optimizers=[dpo]", "iterate.labeler=reward"], True),  # feedback rounds labelled by it
    (["optimizers=[dpo]", "reward.always=true"], True),  # every evaluation scored by it
])
def test_the_reward_model_is_trained_where_something_uses_it(overrides, trains):
    assert load_config(paths.DEMO_CONFIG, overrides).trains_reward_model() is trains
