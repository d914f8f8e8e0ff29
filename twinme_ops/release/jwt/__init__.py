"""JWT signing keys with rotation: key sets, the API's Secret, checks against the running API."""
