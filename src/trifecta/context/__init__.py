"""The context layer: ACE playbooks and ReasoningBank memories per capsule domain.

Start at `facade.ContextService` (the API the orchestrator and the HTTP service share),
`service.create_app` (the FastAPI app) and `docs/context.md`.
"""
