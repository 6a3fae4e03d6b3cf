"""The Prefect events that chain aesq's deployments (flows/deployments.py), and their resources."""

# Emitted by the flows, and only when a flow did something.
INGESTED = "aesq.assets.ingested"
SCORED = "aesq.assets.scored"
# Emitted by the bridge (aesq/servers/bridge.py): one per bucket per notification window.
OBJECT_CREATED = "aesq.object.created"


def bucket_resource(bucket: str) -> str:
    """The Prefect event resource id of a bucket."""
    return f"aesq.bucket.{bucket}"
