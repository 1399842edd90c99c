"""Feast definitions of the fraud scenario: entities, three feature views, one service per model.

The parquet sources are written by `examples/fraud/generate.py` into `data/`. A field tag
`default` is the value Augur serves (and trains with) when the entity has no row, e.g. a
user x merchant pair that never transacted has a history of zero transactions.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Bool, Float32, Float64, Int64

user = Entity(
    name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="A card holder."
)
merchant = Entity(
    name="merchant",
    join_keys=["merchant_id"],
    value_type=ValueType.INT64,
    description="A merchant accepting card payments.",
)


DATA = Path(__file__).resolve().parent / "data"


def _source(name: str) -> FileSource:
    # Absolute: Feast's duckdb offline store resolves relative paths against the cwd.
    return FileSource(
        name=f"{name}_source", path=str(DATA / f"{name}.parquet"), timestamp_field="event_timestamp"
    )


user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(days=2),
    schema=[
        Field(name="txn_count_1d", dtype=Int64),
        Field(name="txn_count_3d", dtype=Int64),
        Field(name="txn_count_7d", dtype=Int64),
        Field(name="txn_count_30d", dtype=Int64),
        Field(name="amount_sum_1d", dtype=Float64),
        Field(name="amount_sum_7d", dtype=Float64),
        Field(name="amount_sum_30d", dtype=Float64),
        Field(name="amount_avg_30d", dtype=Float64),
        Field(name="amount_std_30d", dtype=Float32),
        Field(name="amount_max_30d", dtype=Float32),
        Field(name="distinct_merchants_30d", dtype=Int64),
        Field(name="night_txn_ratio_30d", dtype=Float32),
        Field(name="declined_ratio_7d", dtype=Float32),
        Field(name="avg_hours_between_txn", dtype=Float64),
        Field(name="account_age_days", dtype=Int64),
        Field(name="is_verified", dtype=Bool),
        Field(name="chargeback_count_90d", dtype=Int64),
        Field(name="country_risk_score", dtype=Float32),
    ],
    source=_source("user_stats"),
    online=True,
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    ttl=timedelta(days=2),
    schema=[
        Field(name="txn_count_1d", dtype=Int64),
        Field(name="txn_count_7d", dtype=Int64),
        Field(name="txn_count_30d", dtype=Int64),
        Field(name="amount_avg_30d", dtype=Float64),
        Field(name="amount_std_30d", dtype=Float32),
        Field(name="distinct_users_30d", dtype=Int64),
        Field(name="fraud_report_rate_30d", dtype=Float32),
        Field(name="refund_ratio_30d", dtype=Float32),
        Field(name="category", dtype=Int64),
        Field(name="is_online", dtype=Bool),
        Field(name="days_since_onboarding", dtype=Int64),
        Field(name="chargeback_rate_90d", dtype=Float64),
    ],
    source=_source("merchant_stats"),
    online=True,
)

user_merchant_stats = FeatureView(
    name="user_merchant_stats",
    entities=[user, merchant],
    ttl=timedelta(days=45),
    schema=[
        Field(name="txn_count_total", dtype=Int64, tags={"default": "0"}),
        Field(name="amount_sum_total", dtype=Float64, tags={"default": "0"}),
        Field(name="amount_avg", dtype=Float32),
        Field(name="declined_count_total", dtype=Int64, tags={"default": "0"}),
        Field(name="days_known", dtype=Int64, tags={"default": "0"}),
        Field(name="active_days", dtype=Int64, tags={"default": "0"}),
        Field(name="is_repeat", dtype=Bool, tags={"default": "0"}),
    ],
    source=_source("user_merchant_stats"),
    online=True,
)

_all_views = [user_stats, merchant_stats, user_merchant_stats]

# One service per model, so each model's read plan names exactly what it consumes.
fraud_lgbm = FeatureService(name="fraud_lgbm", features=_all_views)
fraud_mlp = FeatureService(name="fraud_mlp", features=_all_views)

# The amount being scored, known only at request time.
transaction = RequestSource(name="transaction", schema=[Field(name="amount", dtype=Float64)])


# Computed on the request path (Augur and Feast alike): how the amount compares with the
# user's usual one. No model takes it yet; GetOnlineFeatures serves it.
@on_demand_feature_view(
    sources=[user_stats, transaction],
    schema=[Field(name="amount_to_user_avg", dtype=Float64)],
    mode="python",
)
def amount_context(inputs: dict) -> dict:
    ratios = [
        None if amount is None or not avg else amount / avg
        for amount, avg in zip(inputs["amount"], inputs["amount_avg_30d"], strict=True)
    ]
    return {"amount_to_user_avg": ratios}


fraud_amount_context = FeatureService(
    name="fraud_amount_context",
    features=[user_stats[["amount_avg_30d", "txn_count_7d"]], amount_context],
)
