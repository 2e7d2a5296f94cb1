"""The OpenAI-compatible server on Ray Serve: N engine replicas behind one ingress that runs the single
server's routes (`medvllm serve --ray`; docs/RAY_SERVE.md).

    HTTP -> Serve's proxy -> Ingress (create_app: auth, parsing, limits, audit, answers)
                               -> DeploymentHandle, routed by prompt prefix -> EngineReplica x N

Needs `ray[serve]`; nothing here is imported by the single server.
"""
