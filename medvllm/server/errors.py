"""Errors as OpenAI sends them: {"error": {"message", "type", "param", "code"}} with the HTTP status."""

from __future__ import annotations

from starlette.responses import JSONResponse


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def unavailable(message: str, code: str, retry_after_s: int = 1) -> APIError:
    return APIError(503, message, type="server_error", code=code, headers={"Retry-After": str(retry_after_s)})


def step_failed(message: str) -> APIError:
    """A step running the request raised: this request failed, the engine goes on serving."""
    return APIError(500, message, type="server_error", code="step_failed")
