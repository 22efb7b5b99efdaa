"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
    # an environment (conf/folder, conf/local, ...) overrides single parameter keys, not whole blocks
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
}

from tisynth.hooks import MlflowRunLabelHook, MlflowStoreHook, ParameterCheckHook  # noqa: E402

# relative SQLite MLflow stores are anchored at the project root (before kedro-mlflow starts);
# the run kedro-mlflow opens is named after what ran and its experiment marked as model training
HOOKS = (MlflowStoreHook(), ParameterCheckHook(), MlflowRunLabelHook())
