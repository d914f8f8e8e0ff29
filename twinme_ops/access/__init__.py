"""Access control: who may do what through the Dagster webserver, and a record of what they did.

- :mod:`~twinme_ops.access.policy`: the declared roles (viewer, operator, recovery approver),
  the identity provider's groups that grant them, and what each role may do.
- :mod:`~twinme_ops.access.tokens`: the signed ID token of each request, verified against the
  identity provider's JWKS (PyJWT).
- :mod:`~twinme_ops.access.mutations`: what a GraphQL request asks to change, and the tags a
  launch gets (``twinme/launched_by``).
- :mod:`~twinme_ops.access.approvals`: the two-person rule of ``recover_job``.
- :mod:`~twinme_ops.access.audit`: one append-only JSON line per action.
- :mod:`~twinme_ops.access.middleware` and :mod:`~twinme_ops.access.webserver`: the enforcement
  on the webserver's own request path (``twinme-ops-webserver``); the GraphQL rules of a
  signed-in person in :mod:`~twinme_ops.access.graphql_guard`, the ASGI plumbing the handlers
  share in :mod:`~twinme_ops.access.asgi`.
"""
