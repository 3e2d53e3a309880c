"""Bounds on what a node advertises: how many models, how many bytes each and in all.

A node key may register any node, and every model a node advertises reaches every API user in
``/v1/models`` and every admin in ``/v0/nodes`` and the dashboard. So an advert is bounded before
the router keeps any of it (``node_api``: registration and heartbeats are refused with an
OpenAI-shaped 400 or 413 that names the bound and its setting); an admin-registered endpoint's
model list is cut to the bound instead (``endpoints``), with one warning, since the admin chose
the server.

The charset and length of each field (model ids, flags, descriptions) are the schema's business
(:mod:`llmlb_core.protocol`); this module bounds sizes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from llmlb_core.config.settings import RouterSettings
from llmlb_core.protocol import MODEL_ID_RULE, ModelAdvert, valid_model_id
from llmlb_core.server.errors import OpenAIError


@dataclass(frozen=True)
class AdvertLimits:
    """The router's ``max_models_per_node``, ``max_model_advert_bytes`` and ``max_advert_bytes``."""

    max_models: int
    max_model_bytes: int
    max_bytes: int

    @classmethod
    def of(cls, settings: RouterSettings) -> AdvertLimits:
        return cls(
            max_models=settings.max_models_per_node,
            max_model_bytes=settings.max_model_advert_bytes,
            max_bytes=settings.max_advert_bytes,
        )

    def check_body(self, body: bytes) -> None:
        """413 ``advert_too_large`` when a registration or heartbeat body is over ``max_bytes``."""
        if len(body) > self.max_bytes:
            raise OpenAIError(
                413,
                f"The node's message is {len(body):,} bytes, over the router's limit of "
                f"{self.max_bytes:,} (max_advert_bytes)",
                code="advert_too_large",
            )

    def problem(self, models: Sequence[ModelAdvert]) -> OpenAIError | None:
        """Why ``models`` cannot be advertised (too many, or one too large), or None."""
        if len(models) > self.max_models:
            return OpenAIError(
                400,
                f"A node may advertise at most {self.max_models:,} models (max_models_per_node); "
                f"this one advertises {len(models):,}",
                param="models",
                code="too_many_models",
            )
        for index, model in enumerate(models):
            size = len(msgspec.json.encode(model))
            if size > self.max_model_bytes:
                return OpenAIError(
                    413,
                    f"Model '{model.id}' is advertised in {size:,} bytes, over the router's limit of "
                    f"{self.max_model_bytes:,} per model (max_model_advert_bytes)",
                    param=f"models[{index}]",
                    code="advert_too_large",
                )
        return None

    def check(self, models: Sequence[ModelAdvert]) -> None:
        """Raise :meth:`problem`."""
        if (error := self.problem(models)) is not None:
            raise error

    def within(self, models: Sequence[ModelAdvert]) -> tuple[list[ModelAdvert], list[str]]:
        """The models that fit (the first ``max_models`` with a valid id and small enough), and
        why the others were left out (for an endpoint's log line; ids escaped by the caller)."""
        kept: list[ModelAdvert] = []
        dropped: list[str] = []
        for index, model in enumerate(models):
            if len(kept) >= self.max_models:
                dropped.append(f"{len(models) - index} more (over max_models_per_node={self.max_models})")
                break
            if not valid_model_id(model.id):
                dropped.append(f"{model.id} (a model id must be {MODEL_ID_RULE})")
            elif len(msgspec.json.encode(model)) > self.max_model_bytes:
                dropped.append(f"{model.id} (over max_model_advert_bytes={self.max_model_bytes})")
            else:
                kept.append(model)
        return kept, dropped
