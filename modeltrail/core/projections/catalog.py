"""The projections an engine maintains, in the order each event visits them."""

from __future__ import annotations

from modeltrail.core.projections.alias_history import ALIAS_HISTORY
from modeltrail.core.projections.epochs import EPOCH_PROJECTION
from modeltrail.core.projections.fold import Projection
from modeltrail.core.projections.lineage import LINEAGE
from modeltrail.core.projections.promotion import PROMOTION
from modeltrail.core.projections.registry import REGISTRY
from modeltrail.core.projections.streams import STREAMS
from modeltrail.core.projections.webhooks import WEBHOOK_PROJECTION


def default_projections() -> list[Projection]:
    # streams first: it refuses a stale claim before any other fold sees the event
    return [
        STREAMS,
        REGISTRY,
        ALIAS_HISTORY,
        LINEAGE,
        EPOCH_PROJECTION,
        PROMOTION,
        WEBHOOK_PROJECTION,
    ]
