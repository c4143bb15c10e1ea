"""The page's HTTP server (aiohttp): one page, its static files, one JSON.

Routes: ``/`` the page (web/index.html), ``/static/`` the page's own
script and style, ``/vendor/uplot/`` uPlot's dist files from where npm
installed them (assets.py), ``/api/status`` the collector's snapshot
(snapshot.py) and ``/healthz``. Read-only: only GET/HEAD routes exist.
Snapshots are built in a worker thread so a slow one never stalls the
event loop. Every response forbids framing and sniffing, and the page may
load scripts from this server only (Content-Security-Policy): payload
previews are shown as text, never parsed as HTML.
"""

import asyncio
import logging
import pathlib
from typing import Callable

import orjson
from aiohttp import web

from beam_jobs.status import assets

_LOGGER = logging.getLogger(__name__)

_SECURITY_HEADERS = {
    'Content-Security-Policy': (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"),
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
}


@web.middleware
async def _headers(request, handler):
  response = await handler(request)
  response.headers.update(_SECURITY_HEADERS)
  return response


def make_app(snapshot: Callable[[], dict],
             uplot_dir: pathlib.Path) -> web.Application:
  """The application; ``snapshot`` returns /api/status's document."""

  async def index(_):
    return web.FileResponse(assets.WEB_DIR / 'index.html',
                            headers={'Cache-Control': 'no-cache'})

  async def status(_):
    doc = await asyncio.get_running_loop().run_in_executor(None, snapshot)
    return web.Response(
        body=orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY),
        content_type='application/json',
        headers={'Cache-Control': 'no-store'})

  async def healthz(_):
    return web.Response(text='ok')

  app = web.Application(middlewares=[_headers])
  app.router.add_get('/', index)
  app.router.add_get('/api/status', status)
  app.router.add_get('/healthz', healthz)
  app.router.add_static('/static/', assets.WEB_DIR)
  app.router.add_static('/vendor/uplot/', uplot_dir)
  return app


async def serve(app: web.Application, host: str, port: int,
                on_ready: Callable[[str], None]) -> None:
  """Serves until cancelled; ``on_ready`` gets the page's URL (the real
  port when ``port`` is 0)."""
  runner = web.AppRunner(app, access_log=None)
  await runner.setup()
  try:
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    shown = f'[{bound_host}]' if ':' in bound_host else bound_host
    on_ready(f'http://{shown}:{bound_port}/')
    await asyncio.Event().wait()
  finally:
    await runner.cleanup()
