"""`medvllm serve --ray` options: replica count or autoscaling bounds, resources per replica, and the
Ray Serve deployment options they become. Plain data (no Ray import), checked before anything starts."""

from __future__ import annotations

from dataclasses import dataclass

from medvllm.config import Config
from medvllm.errors import ConfigError

HEALTH_CHECK_PERIOD_S = 5.0  # how often Ray asks each replica whether its engine thread still runs


@dataclass
class RayOptions:
    replicas: int | None = None  # a fixed count; None: 1, or autoscaling when a bound is given
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None  # autoscaling aims at this many calls per replica
    replica_cpus: float = 1.0
    replica_gpus: float | None = None  # None: tensor_parallel_size on CUDA, else 0
    address: str | None = None  # a running cluster ("auto", "ray://host:10001"); None: start one here
    shutdown_timeout_s: float = 30.0

    @property
    def autoscaling(self) -> bool:
        return any(v is not None for v in (self.min_replicas, self.max_replicas, self.target_ongoing_requests))

    @property
    def most_replicas(self) -> int:
        if self.autoscaling:
            return self.max_replicas or max(1, self.min_replicas or 1)
        return self.replicas or 1

    def check(self) -> None:
        if self.replicas is not None and self.autoscaling:
            raise ConfigError(
                "--replicas sets a fixed count and --min-replicas/--max-replicas/--target-ongoing-requests "
                "autoscale: give one or the other"
            )
        for flag, value in (("--replicas", self.replicas), ("--max-replicas", self.max_replicas)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} {value} is not positive: give 1 or more replicas")
        if self.min_replicas is not None and self.min_replicas < 0:
            raise ConfigError(f"--min-replicas {self.min_replicas} is negative: give 0 or more")
        low, high = self.min_replicas or 0, self.max_replicas
        if high is not None and low > high:
            raise ConfigError(f"--min-replicas {low} is above --max-replicas {high}: lower one or raise the other")
        if self.target_ongoing_requests is not None and self.target_ongoing_requests <= 0:
            raise ConfigError(f"--target-ongoing-requests {self.target_ongoing_requests} is not positive")
        if self.replica_cpus < 0 or (self.replica_gpus is not None and self.replica_gpus < 0):
            raise ConfigError("--replica-cpus and --replica-gpus must not be negative")

    def engine_deployment(self, config: Config, max_queue: int) -> dict:
        """Options of the engine deployment (ray.serve.deployment(...).options(**these))."""
        gpus = self.replica_gpus
        if gpus is None:
            gpus = config.tensor_parallel_size if config.resolved_device.type == "cuda" else 0
        out = {
            # calls one replica may hold: its batch and the queue, so one replica can take all when others fail
            "max_ongoing_requests": config.max_num_seqs + max_queue,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": gpus},
            "health_check_period_s": HEALTH_CHECK_PERIOD_S,
            "graceful_shutdown_timeout_s": self.shutdown_timeout_s,
        }
        if self.autoscaling:
            low = 1 if self.min_replicas is None else self.min_replicas
            scaling = {"min_replicas": low, "max_replicas": self.most_replicas}
            if self.target_ongoing_requests is not None:
                scaling["target_ongoing_requests"] = self.target_ongoing_requests
            out["autoscaling_config"] = scaling
        else:
            out["num_replicas"] = self.replicas or 1
        return out
