"""A real SSH server on the loopback interface, for the remote-engine tests: asyncssh's server, with throwaway
ed25519 keys made by ``ssh-keygen``, running each command as the current user through ``/bin/sh -c`` the way
OpenSSH's ``sshd`` does (a new session, the channel's stdin, stdout and stderr as the command's pipes; SFTP
served too), so the system's ``ssh`` client talks to it exactly as to a remote machine.

Like ``sshd``, it does not kill a command when its connection goes: it closes the command's pipes (its stdin
reads end of file, its writes fail). :meth:`LoopbackSSH.drop` cuts every connection abruptly, as a network
that goes away would. ``commands`` records what was run, ``pids`` the processes started; ``prefix`` is put
before every command.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from pathlib import Path

import asyncssh


def make_key(path: Path) -> Path:
    """A new ed25519 key pair without a passphrase (``path`` and ``path.pub``), made by ``ssh-keygen``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "equi360-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


class LoopbackSSH:
    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.host_key = make_key(folder / "host_key")
        self.client_key = make_key(folder / "client_key")   # authorised
        self.other_key = make_key(folder / "other_key")     # not authorised
        (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
        self.known_hosts = folder / "known_hosts"
        self.commands: list[str] = []
        self.prefix = ""  # put before every command (e.g. ``ulimit -f N; ``: a disk that fills)
        self.pids: list[int] = []
        self._connections: set = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="loopback-ssh")
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the loopback SSH server did not start")

    # --- the server, on its own event loop ------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncssh.create_server(
            lambda: _Server(self), "127.0.0.1", 0, server_host_keys=[str(self.host_key)],
            authorized_client_keys=str(self.folder / "authorized_keys"), process_factory=self._run,
            sftp_factory=True, allow_scp=True, encoding=None, x11_forwarding=False, agent_forwarding=False))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _run(self, process) -> None:
        command = self.prefix + (process.command or "exec /bin/sh")
        self.commands.append(command)
        proc = await asyncio.create_subprocess_exec("/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    start_new_session=True)
        self.pids.append(proc.pid)
        copies = [asyncio.ensure_future(_copy_in(process.stdin, proc.stdin)),
                  asyncio.ensure_future(_copy_out(proc.stdout, process.stdout)),
                  asyncio.ensure_future(_copy_out(proc.stderr, process.stderr))]
        closed = asyncio.ensure_future(process.channel.wait_closed())
        waited = asyncio.ensure_future(proc.wait())
        await asyncio.wait([closed, waited], return_when=asyncio.FIRST_COMPLETED)
        if not waited.done():  # the connection went: close the command's pipes, as sshd does (no signal)
            for task in copies:
                task.cancel()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                _close(pipe)
            await waited
            return
        await asyncio.gather(*copies[1:], return_exceptions=True)  # its last words
        copies[0].cancel()
        try:
            process.exit(proc.returncode if proc.returncode >= 0 else 128 - proc.returncode)
        except (OSError, asyncssh.Error):
            pass

    # --- for the tests --------------------------------------------------------------------------------

    @property
    def destination(self) -> str:
        import getpass
        return f"{getpass.getuser()}@127.0.0.1:{self.port}"

    def drop(self) -> None:
        """Cut every connection at once, without a goodbye (the network going away)."""
        def abort():
            for conn in list(self._connections):
                conn.abort()
        self._loop.call_soon_threadsafe(abort)

    def close(self) -> None:
        def stop():
            self._server.close()
            for conn in list(self._connections):
                conn.abort()
            self._loop.stop()
        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


class _Server(asyncssh.SSHServer):
    def __init__(self, owner: LoopbackSSH):
        self._owner = owner

    def connection_made(self, conn) -> None:
        self._conn = conn
        self._owner._connections.add(conn)

    def connection_lost(self, exc) -> None:
        self._owner._connections.discard(self._conn)


async def _copy_in(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error, asyncio.CancelledError):
        pass
    finally:
        _close(writer)


async def _copy_out(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncssh.Error):
        pass


def _close(pipe) -> None:
    try:
        if isinstance(pipe, asyncio.StreamWriter):
            pipe.close()
        elif pipe is not None and getattr(pipe, "_transport", None) is not None:
            pipe._transport.close()
    except (OSError, RuntimeError):
        pass
