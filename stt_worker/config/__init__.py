"""Settings: the one typed, frozen configuration object, read from the environment once.

No other module reads ``os.environ``. Names follow the seed module (``NATS_URL``,
``WHISPER_*``, ``STT_*``, ``OTEL_*``, ``HYPERDX_*``). Each field is declared with `setting`,
which keeps its environment variable(s), group and description as data:
``python -m stt_worker.tools.configuration_docs --write`` renders them as
docs/configuration.md, and tests/test_configuration_docs.py fails when that file is stale or a
field lacks a description or a group.

Each `Group` has a module of its own here holding its fields (`transport`, `nats_auth`,
`engine`, ...); `settings` composes them into `Settings`.
"""

from stt_worker.config.environment import EnvSettings
from stt_worker.config.fields import Group, group_of, setting
from stt_worker.config.settings import Settings, load_settings

__all__ = ["EnvSettings", "Group", "Settings", "group_of", "load_settings", "setting"]
