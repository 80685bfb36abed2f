"""Media worker processes (`media.workers` > 1): the data plane on every core.

The node's process keeps the control plane (SIP, the registry, the API, the cascade, the
recording plan) and each stream's `LiveStream` (its INVITE attempts, retries and consumers);
a worker process receives the stream's RTP, puts it in order, demuxes it, records it,
sends the channel's relays to upper platforms (`relays`) and runs its WebRTC viewers (their
peer connections, tracks and feeds: `viewers`). The node's process binds every port from its
pool (a stream's, a relay's) and passes the socket over; the port goes back to the pool when
the stream or relay closes, or its worker dies. A viewer's ICE and DTLS sockets are aiortc's,
opened in the worker.

Requests of the node's process to a worker (JSON, answered; see `wire` for the framing):

=================  ===============================================================================
``hello``          index, bind host, receive settings, recording (root, segment_s, fsync_s,
                   direct_io, tz)
``open``           a stream: ``sid``, ``channel``, ``transport``, ``token`` of the passed socket,
                   ``peers`` (who may connect to a TCP port); answer ``port``
``expect``         the answer's ``hosts``, ``ssrc`` and TCP ``peers`` (no answer)
``connect``        tcp-active: ``host``, ``port``; answer ``failed`` (timeout | connection) or {}
``tap``            ``on``: send the stream's frames over (from its last keyframe); no answer
``relays``         ``rids``: the relays the stream ``sid`` feeds from now on (one that joins gets
                   the cached GOP first); no answer
``relay``          open a relay's sender: ``rid``, ``token`` of the passed socket (udp: bound;
                   tcp: the pool's listener, which tcp-active replaces with a plain bound socket),
                   ``channel``, ``ssrc``, ``transport``, ``remote``, ``bind_host``,
                   ``payload_max``, ``timeout_s``, ``connect_timeout_s``, ``max_buffer``,
                   ``gap_timeout_s``, ``cut``; answer ``port``
``relay_start``    ``rid``: the upstream ACKed, send; no answer
``relay_cut``      ``rid``, ``on``: whether it may pass packets on as they come; no answer
``relay_gap``      ``rid``, ``reason``: its stream's attempt ended (it is invited again); no
                   answer
``relay_close``    ``rid``, ``reason``: end it (no ``relay_end`` follows); no answer
``viewer``         make a WebRTC viewer's peer connection and take the browser's offer: ``vid``,
                   ``channel``, ``user``, ``offer`` (SDP), ``ice_servers`` (``urls``,
                   ``username``, ``credential``), ``connect_timeout_s``, ``queue_frames``,
                   ``queue_bytes``; answer {} or ``status`` and ``reason`` (400: the offer)
``viewers``        ``vids``: the viewers the stream ``sid`` feeds from now on (one that joins
                   gets the cached GOP first); no answer
``viewer_answer``  ``vid``, ``transcode_h265``, ``first_frame_timeout_s``: once the stream's
                   first video frame came, answer ``sdp`` (ICE gathered) and ``codec``, or
                   ``status``, ``reason`` (and ``codec``) as `media.webrtc.ViewerError` has them
``viewer_close``   ``vid``, ``reason``: end it (no ``viewer_end`` follows); answered once its
                   peer connection has closed
``record``         ``on``: record the stream's frames in the worker; no answer
``rec``            a recorder call for a channel: ``call`` (lost | gap | planned | close_channel),
                   ``channel``, ``args``; no answer
``stats``          answer: per stream counters, ``age`` of its last packet, frames, demuxer refusal,
                   SSRC; per relay its sender's ``stats()``; per viewer its ``connection``
                   state and counters (`viewers.COUNTERS`); the recorder's counters; loop
                   ``lag_s``/``max_lag_s``; ``cpu_s``
``close``          a stream: what it still held is demuxed and recorded; answer its final counters
``flush``          the recorder's buffered bytes to the files
``stop``           every relay, viewer and stream closed and the recorder closed (gaps still
                   open end at ``wall``)
=================  ===============================================================================

Events of a worker: ``loss`` (``sid``, ``missing`` packets), ``key`` (the stream's first
video keyframe: ``codec``, ``width``, ``height``), ``closed`` (the device closed a TCP media
connection), ``relay_end`` (``rid``, ``reason``, ``gap``, ``stats``: a relay ended by itself:
the upstream closed or stopped reading, a connect failed, or with ``gap`` its stream brought
nothing for ``gap_timeout_s`` after a gap), ``viewer_end`` (``vid``, ``reason``, ``stats``: a
viewer that has answered ended by itself: its peer connection failed or closed, the browser
did not connect within ``connect_timeout_s``, its track ended), and frames messages while a
stream is tapped.
"""
