"""The web dashboard and image playground at ``/dashboard`` (a capability plugin)."""
