"""The mirroring WebSocket proxy: clients talk to it as if it were the server; every client
frame goes to the primary (whose frames the client gets) and, in the primary's order, to the
shadow (whose frames are only recorded).

Pure core: `sequencer` (shadow ordering), `frames` (cheap inspection), `route` (who is
primary). I/O: `relay` (client and upstream sockets), `admin` (control plane), `cli`.
"""

from stateshift.native import install

install()
