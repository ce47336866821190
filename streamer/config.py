"""The topology file: pydantic models, loading, path resolution and env overrides.

Every topology key of docs/contracts.md is modelled here with its default; unknown keys are
errors (a typo must not silently fall back to a default). Problems come out as
`ConfigError`s naming the file and the dotted key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamer.errors import ConfigError, ConfigErrors

BOOTSTRAP_ENV = "STREAMER_BOOTSTRAP_SERVERS"
"""Overrides `kafka.bootstrap_servers` of every topology (containers, CI, staging)."""
METRICS_HOST_ENV = "STREAMER_METRICS_HOST"
"""Overrides `metrics.host` (a container publishes its endpoints on 0.0.0.0)."""
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
FILE_SUFFIX = "_file"
"""`kafka.config` keys ending in it name a file whose content is the setting's value
(`sasl.password_file: /run/secrets/kafka`), so secrets stay out of the topology."""

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ALIASES = {"schema_": "schema"}
"""Field name -> key in the file, for errors on defaults (pydantic reports the field name)."""
SENSITIVE_KEYS = frozenset(
    {
        "sasl.username",
        "sasl.password",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.client.credentials.client.secret",  # alias of the one above
        "sasl.oauthbearer.assertion.private.key.file",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
        "ssl.key.location",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "ssl.ca.pem",
    }
)
"""librdkafka settings whose values are never printed: librdkafka's own list, the properties
flagged `_RK_SENSITIVE` in src/rdkafka_conf.c (confluentinc/librdkafka), which it shows as
`[redacted]` in its `debug=conf` dump. Checked against that dump of librdkafka 2.16.0."""
_SECRET_LOOKING = re.compile(
    r"pass(word|wd|phrase)|pwd|secret|token|credential|api[._-]?key|private", re.IGNORECASE
)
"""Key names hidden although librdkafka does not flag them (a plugin's `my.api.token`)."""


def sensitive(key: str) -> bool:
    """Whether a setting's value is a secret: librdkafka's list, or a secret-looking name."""
    return key.lower() in SENSITIVE_KEYS or _SECRET_LOOKING.search(key) is not None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _topic(value: str) -> str:
    if not _TOPIC.match(value):
        raise ValueError(f"{value!r} is not a valid Kafka topic name ([A-Za-z0-9._-], 1-249)")
    return value


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    """Paths in a topology file are relative to that file."""
    if value is None:
        return None
    base = (info.context or {}).get("base_dir")
    return (Path(base) / value).resolve() if base and not value.is_absolute() else value


def _avro_needs_schema(value: Path | None, info: ValidationInfo) -> Path | None:
    """`format: avro` needs a schema; reported under the `schema` key itself."""
    if value is None and info.data.get("format") == "avro":
        raise ValueError("format avro needs a schema (path to an .avsc file)")
    return value


class KafkaSettings(_Model):
    """Where the cluster is and how to talk to it."""

    bootstrap_servers: str = "localhost:9092"
    """Comma-separated host:port list; `STREAMER_BOOTSTRAP_SERVERS` overrides it."""
    config: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Any librdkafka setting (security.protocol, sasl.*, ssl.*, ...), passed to every client."""

    def client_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka settings for a client of this cluster."""
        return {**self.config, "bootstrap.servers": self.bootstrap_servers}

    def redacted(self) -> dict[str, Any]:
        """The settings with secret values hidden, safe to print or log."""
        return {
            k: SecretStr(str(v)) if sensitive(k) else v for k, v in self.client_config().items()
        }


class _EncodedTopic(_Model):
    topic: str
    format: Literal["avro", "json"] = "json"
    schema_: Path | None = Field(default=None, alias="schema", validate_default=True)
    """Avro schema (.avsc) of the values; required for `format: avro`."""

    _check_topic = field_validator("topic")(_topic)
    _paths = field_validator("schema_")(_resolve)
    _schema_for_avro = field_validator("schema_")(_avro_needs_schema)


class InputSpec(_EncodedTopic):
    """The topic events arrive on and how their values are encoded."""


class SinkSpec(_EncodedTopic):
    """A topic the engine writes: predictions (`output`) or the inference lake (`lake`)."""


class LakeSpec(SinkSpec):
    """The inference lake: one record per (event, variant that scored it)."""

    enabled: bool = True
    """false: no lake records (one record written per event instead of two or more); the
    bandit controller and shadow variants need the lake."""


class DeadLetterSpec(_Model):
    topic: str

    _check_topic = field_validator("topic")(_topic)


class BatchingSpec(_Model):
    """Micro-batching: a batch closes at max_batch_size events or max_wait_ms, whichever first."""

    max_batch_size: int = Field(default=512, ge=1, le=100_000)
    """Events per ONNX call; larger batches amortise per-call overhead."""
    max_wait_ms: int = Field(default=5, ge=0, le=60_000)
    """The longest an event waits for its batch to fill; bounds added latency."""
    max_in_flight_batches: int = Field(default=4, ge=1, le=64)
    """Batches produced but not yet acknowledged; their offsets commit in order once acked."""
    shadow_budget_ms: int | None = Field(default=50, ge=0, le=60_000)
    """The longest served outputs wait for shadow variants per batch; shadow rows that are
    not scored by then are skipped and counted. null waits for every shadow."""


class VariantSpec(_Model):
    """One model that scores events: served by weight, or a shadow that is only logged."""

    name: str
    model: Path
    """An ONNX file, or a model directory of numbered versions (`1/model.onnx`, ...)."""
    weight: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    """Relative share of served traffic (normalised over non-shadow variants)."""
    shadow: bool = False
    """Scored and written to the lake for every event, never served."""
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False)
    """Shadows only: the share of events scored, a deterministic sample by id."""
    version: str | None = None
    """A model file's version in records and metrics (default: the file's stem); for a
    model directory, the version to serve (default: the highest)."""

    _paths = field_validator("model")(_resolve)

    @model_validator(mode="after")
    def _sampling_is_for_shadows(self) -> VariantSpec:
        if self.sample_rate != 1.0 and not self.shadow:
            raise ValueError("sample_rate applies to shadow variants only")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid variant name ([A-Za-z0-9._-])")
        return value


class RoutingSpec(_Model):
    strategy: Literal["static", "bandit"] = "static"
    """static: weights change only by `streamer control`; bandit: the controller's too."""
    control_topic: str | None = None
    """Compacted topic of control records keyed by topology name (`streamer control`, the
    bandit controller); agents follow it. None: the topology file's weights, always."""
    status_topic: str | None = None
    """Compacted topic where agents report what they serve (default: `<control_topic>.status`)."""

    @field_validator("control_topic", "status_topic")
    @classmethod
    def _control(cls, value: str | None) -> str | None:
        return None if value is None else _topic(value)

    @property
    def agent_status_topic(self) -> str | None:
        """Where agents report what they serve; None without a control topic."""
        if self.control_topic is None:
            return None
        return self.status_topic or f"{self.control_topic}.status"

    @model_validator(mode="after")
    def _bandit_needs_control(self) -> RoutingSpec:
        if self.strategy == "bandit" and self.control_topic is None:
            raise ValueError("strategy bandit needs a control_topic")
        return self


class BanditSpec(_Model):
    """The bandit controller (`streamer controller`): joins the lake with delayed rewards
    and moves traffic to the variants that earn more."""

    policy: Literal["thompson", "ucb1", "epsilon_greedy"] = "thompson"
    feedback_topic: str
    """Rewards: JSON `{"id", "reward"}` (key = id), optionally `"variant"`."""
    min_weight: float = Field(default=0.02, ge=0.0, lt=1.0)
    """Floor for every enabled served variant's weight so none starves of exploration."""
    reward: Literal["binary", "continuous"] = "binary"
    """binary: rewards in [0, 1] (Beta-Bernoulli Thompson); continuous: any finite number."""
    reward_window_s: float = Field(default=600.0, gt=0.0, le=7 * 86400.0)
    """How long a decision waits for its reward."""
    default_reward: float | None = Field(default=None, allow_inf_nan=False)
    """Applied to a decision whose window closes without feedback; null drops it."""
    update_interval_s: float = Field(default=5.0, ge=0.1, le=86400.0)
    """At most one control record per interval."""
    min_rewards: int = Field(default=100, ge=0)
    """Rewards counted (all variants) before the first move."""
    decay: float = Field(default=1.0, gt=0.0, le=1.0)
    """Multiplier on past evidence per update interval; < 1 forgets old rewards."""
    epsilon: float = Field(default=0.1, ge=0.0, le=1.0)
    """epsilon_greedy: the share of traffic spread evenly for exploration."""
    max_pending: int = Field(default=5_000_000, ge=1)
    """Cap on decisions waiting for a reward, per lake partition (a controller process holds
    this many for each partition it owns); the oldest go first."""
    seed: int | None = None
    """Seeds the policy's random draws (Thompson sampling) for reproducible runs."""
    checkpoint_topic: str | None = None
    """Compacted topic of the controller's learned state and input positions
    (default: `<routing.control_topic>.bandit`)."""
    metrics_port: int | None = Field(default=9101, ge=0, le=65535)
    """The controller's /metrics, /healthz, /readyz; null disables, 0 picks a free port."""

    _check_topic = field_validator("feedback_topic")(_topic)

    @field_validator("checkpoint_topic")
    @classmethod
    def _checkpoint(cls, value: str | None) -> str | None:
        return None if value is None else _topic(value)

    @model_validator(mode="after")
    def _binary_default(self) -> BanditSpec:
        d = self.default_reward
        if self.reward == "binary" and d is not None and not 0.0 <= d <= 1.0:
            raise ValueError("default_reward must be within [0, 1] for reward: binary")
        return self


class ModelsSpec(_Model):
    """Model directories: how agents find new versions."""

    poll_interval_s: float = Field(default=5.0, gt=0.0, le=3600.0)
    """How often model directories are checked for new versions."""


class ExactlyOnceSpec(_Model):
    """`guarantee: exactly_once`: how batches are grouped into Kafka transactions."""

    commit_interval_ms: int = Field(default=100, ge=0, le=60_000)
    """How long one transaction stays open, collecting batches (0: one per batch). Longer
    trades latency (outputs are visible to read_committed consumers only once committed)
    for throughput (fewer commits)."""
    transaction_timeout_ms: int = Field(default=10_000, ge=1_000, le=900_000)
    """The broker aborts a transaction left open this long (a crashed agent's): until then
    read_committed consumers wait at its first record. Set STREAMER_INSTANCE_ID to a stable
    name per replica and a restart aborts its predecessor's open transaction at once."""

    @model_validator(mode="after")
    def _commits_before_timeout(self) -> ExactlyOnceSpec:
        if self.commit_interval_ms * 2 > self.transaction_timeout_ms:
            raise ValueError(
                "commit_interval_ms must be at most half of transaction_timeout_ms "
                "(the broker would abort transactions that stay open longer)"
            )
        return self


class MetricsSpec(_Model):
    port: int | None = Field(default=9100, ge=0, le=65535)
    """Port of /metrics, /healthz and /readyz; null disables the server, 0 picks a free one."""
    host: str = "127.0.0.1"
    """Interface the agent's and the controller's HTTP endpoints listen on; 0.0.0.0 for a
    container scraped from outside (env STREAMER_METRICS_HOST overrides)."""


class DriftSpec(_Model):
    """Drift of live inputs and predictions from a reference profile (`streamer profile`);
    off without a profile."""

    profile: Path | None = None
    """The reference profile (JSON, relative to the topology file), e.g. one shipped beside
    the model; null: no drift metrics."""
    window: int = Field(default=10_000, ge=1, le=10_000_000)
    """Events per served variant the live distribution is measured over (sliding)."""
    bins: int = Field(default=10, ge=2, le=100)
    """Quantile bins per distribution that `streamer profile` makes (10: deciles)."""
    threshold: float = Field(default=0.2, gt=0.0, allow_inf_nan=False)
    """A PSI above it is logged as drift (once, until it falls back within it)."""
    min_events: int | None = Field(default=None, ge=1)
    """Events a variant's window needs before its drift gauges are set (default: 1000, or
    `window` when smaller)."""

    _paths = field_validator("profile")(_resolve)

    @model_validator(mode="after")
    def _min_within_window(self) -> DriftSpec:
        if self.min_events is not None and self.min_events > self.window:
            raise ValueError("min_events must be at most window")
        return self

    @property
    def events_needed(self) -> int:
        """`min_events`, or its default."""
        return self.min_events if self.min_events is not None else min(1000, self.window)


class TopicsSpec(_Model):
    """Defaults for `streamer topics create`."""

    partitions: int = Field(default=6, ge=1, le=10_000)
    replication_factor: int = Field(default=1, ge=1, le=32)


class Topology(_Model):
    """One topology file: what runs, where it reads and where it writes."""

    name: str
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    input: InputSpec
    features: list[str] = Field(min_length=1)
    """Record fields that become float32 model input columns, in this order."""
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    variants: list[VariantSpec] = Field(min_length=1)
    outputs: list[str] | None = Field(default=None, min_length=1)
    """ONNX outputs to publish (default: all of them)."""
    output: SinkSpec
    lake: LakeSpec
    dead_letter: DeadLetterSpec
    models: ModelsSpec = Field(default_factory=ModelsSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    bandit: BanditSpec | None = None
    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    exactly_once: ExactlyOnceSpec = Field(default_factory=ExactlyOnceSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    topics: TopicsSpec = Field(default_factory=TopicsSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    source: Path | None = Field(default=None, exclude=True)
    """The file this topology was loaded from (set by `load_topology`)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid topology name ([A-Za-z0-9._-])")
        return value

    @field_validator("features")
    @classmethod
    def _features(cls, value: list[str]) -> list[str]:
        dupes = sorted({f for f in value if value.count(f) > 1})
        if dupes:
            raise ValueError(f"duplicate feature(s): {', '.join(dupes)}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate variant name(s): {', '.join(dupes)}")
        served = [v for v in value if not v.shadow]
        if not served:
            raise ValueError("needs at least one variant that is not a shadow")
        if sum(v.weight for v in served) <= 0 and len(served) > 1:
            raise ValueError("served variants need weights with a positive sum")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Topology:
        r = self.routing
        if self.routing.strategy == "bandit" and self.bandit is None:
            raise ValueError("routing.strategy bandit needs a bandit section")
        if self.bandit is not None and r.control_topic is None:
            raise ValueError("a bandit section needs routing.control_topic (it publishes there)")
        if r.status_topic is not None and r.control_topic is None:
            raise ValueError("routing.status_topic needs a routing.control_topic")
        topics = {
            "input.topic": self.input.topic,
            "output.topic": self.output.topic,
            "lake.topic": self.lake.topic,
            "dead_letter.topic": self.dead_letter.topic,
            "routing.control_topic": r.control_topic,
            "routing.status_topic": r.agent_status_topic,
            "bandit.feedback_topic": self.bandit.feedback_topic if self.bandit else None,
            "bandit.checkpoint_topic": self.checkpoint_topic,
        }
        if not self.lake.enabled:
            if self.bandit is not None:
                raise ValueError("a bandit section needs the lake (lake.enabled: false)")
            if self.shadows:
                raise ValueError("shadow variants write only to the lake (lake.enabled: false)")
            del topics["lake.topic"]
        seen: dict[str, str] = {}
        for key, topic in topics.items():
            if topic in seen:
                raise ValueError(f"{key} {topic!r} is the same topic as {seen[topic]}")
            if topic is not None:
                seen[topic] = key
        return self

    @property
    def group_id(self) -> str:
        """Consumer group of this topology's agents."""
        return f"{self.name}.agent"

    @property
    def served(self) -> list[VariantSpec]:
        return [v for v in self.variants if not v.shadow]

    @property
    def shadows(self) -> list[VariantSpec]:
        return [v for v in self.variants if v.shadow]

    def served_weights(self) -> dict[str, float]:
        """Configured weights of the served variants (the router normalises them)."""
        served = self.served
        if len(served) == 1:  # a single served variant may leave its weight out
            return {served[0].name: 1.0}
        return {v.name: v.weight for v in served}

    def agent_topics(self) -> list[str]:
        """The topics an agent reads and writes: input, output, lake, dead letters."""
        lake = [self.lake.topic] if self.lake.enabled else []
        return [self.input.topic, self.output.topic, *lake, self.dead_letter.topic]

    @property
    def checkpoint_topic(self) -> str | None:
        """Where the bandit controller keeps its learned state (None without a bandit)."""
        if self.bandit is None or self.routing.control_topic is None:
            return None
        return self.bandit.checkpoint_topic or f"{self.routing.control_topic}.bandit"

    @property
    def controller_group_id(self) -> str:
        """Consumer group of this topology's bandit controllers."""
        return f"{self.name}.controller"

    def control_topics(self) -> list[str]:
        """The compacted topics of live control: control records and agents' reports."""
        r = self.routing
        return [t for t in (r.control_topic, r.agent_status_topic) if t is not None]

    def all_topics(self) -> list[str]:
        """Every topic this topology reads or writes."""
        topics = self.agent_topics() + self.control_topics()
        if self.bandit is not None:
            topics.append(self.bandit.feedback_topic)
        if self.checkpoint_topic is not None:
            topics.append(self.checkpoint_topic)
        return topics


def load_topology(path: str | Path) -> Topology:
    """Read, validate and resolve a topology file; raise ConfigErrors naming file and key."""
    file = Path(path)
    shown = str(path)
    try:
        raw = yaml.safe_load(file.read_text())
    except FileNotFoundError:
        raise ConfigErrors([ConfigError(shown, "", "file not found")]) from None
    except OSError as exc:
        raise ConfigErrors([ConfigError(shown, "", f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigErrors([ConfigError(shown, "", f"{where}{problem}")]) from None
    if not isinstance(raw, dict):
        raise ConfigErrors([ConfigError(shown, "", "must be a YAML mapping of topology keys")])
    problems: list[ConfigError] = []
    raw = _substitute(raw, shown, "", problems)
    raw.setdefault("kafka", {})
    if isinstance(raw["kafka"], dict) and os.environ.get(BOOTSTRAP_ENV):
        raw["kafka"] = {**raw["kafka"], "bootstrap_servers": os.environ[BOOTSTRAP_ENV]}
    if os.environ.get(METRICS_HOST_ENV):
        metrics = raw.get("metrics") if isinstance(raw.get("metrics"), dict) else {}
        raw["metrics"] = {**metrics, "host": os.environ[METRICS_HOST_ENV]}
    kafka = raw["kafka"]
    if isinstance(kafka, dict) and isinstance(kafka.get("config"), dict):
        kafka["config"] = _read_secret_files(kafka["config"], file.parent, shown, problems)
    if problems:
        raise ConfigErrors(problems)
    try:
        topology = Topology.model_validate(raw, context={"base_dir": file.parent.resolve()})
    except ValidationError as exc:
        raise ConfigErrors([_config_error(shown, e) for e in exc.errors()]) from None
    return topology.model_copy(update={"source": file})


def _substitute(value: Any, shown: str, key: str, problems: list[ConfigError]) -> Any:
    """`${NAME}` in any string value becomes the environment variable NAME (secrets,
    per-environment names); an unset one is an error naming the key."""
    if isinstance(value, dict):
        return {
            k: _substitute(v, shown, f"{key}.{k}" if key else str(k), problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute(v, shown, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def env(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            problems.append(ConfigError(shown, key, f"environment variable {name} is not set"))
            return ""
        return os.environ[name]

    return _ENV_REF.sub(env, value)


def _read_secret_files(
    config: dict[str, Any], base: Path, shown: str, problems: list[ConfigError]
) -> dict[str, Any]:
    """`<setting>_file: PATH` in kafka.config becomes `<setting>: <the file's content>`."""
    out = {}
    for key, value in config.items():
        if not (isinstance(key, str) and key.endswith(FILE_SUFFIX) and isinstance(value, str)):
            out[key] = value
            continue
        setting = key.removesuffix(FILE_SUFFIX)
        path = Path(value) if Path(value).is_absolute() else base / value
        try:
            out[setting] = path.read_text().rstrip("\r\n")
        except OSError as exc:
            problems.append(
                ConfigError(shown, f"kafka.config.{key}", f"cannot read {value}: {exc.strerror}")
            )
    return out


def _config_error(file: str, error: Any) -> ConfigError:
    key = ""
    for part in error["loc"]:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            name = _ALIASES.get(str(part), str(part))
            key += f".{name}" if key else name
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    return ConfigError(file, key, message)
