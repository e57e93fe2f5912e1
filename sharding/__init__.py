"""The sharding engine: rules, algorithms, the planner and the merge of shard results."""

# Before sharding.plan_cache can load: dbmesh's guard against an out-of-date compiled build
# (dbmesh/native.py) covers it too.
import dbmesh  # noqa: F401
