"""Media worker processes (`media.workers` > 1): the data plane on every core.

The node's process keeps the control plane (SIP, the registry, the API, the cascade, the
recording plan) and each stream's `LiveStream` (its INVITE attempts, retries and consumers);
a worker process receives the stream's RTP, puts it in order, demuxes it and records it.

Requests of the node's process to a worker (JSON, answered; see `wire` for the framing):

==========  ==================================================================================
``hello``   index, bind host, receive settings, recording (root, segment_s, fsync_s, tz)
``open``    a stream: ``sid``, ``channel``, ``transport``, ``token`` of the passed socket,
            ``peers`` (who may connect to a TCP port); answer ``port``
``expect``  the answer's ``hosts``, ``ssrc`` and TCP ``peers`` (no answer)
``connect`` tcp-active: ``host``, ``port``; answer ``failed`` (timeout | connection) or {}
``tap``     ``on``: send the stream's frames over (from its last keyframe); no answer
``record``  ``on``: record the stream's frames in the worker; no answer
``rec``     a recorder call for a channel: ``call`` (lost | gap | planned | close_channel),
            ``channel``, ``args``; no answer
``stats``   answer: per stream counters, ``age`` of its last packet, frames, demuxer refusal,
            SSRC; the recorder's counters; loop ``lag_s``/``max_lag_s``; ``cpu_s``
``close``   a stream: what it still held is demuxed and recorded; answer its final counters
``flush``   the recorder's buffered bytes to the files
``stop``    every stream closed and the recorder closed (gaps still open end at ``wall``)
==========  ==================================================================================

Events of a worker: ``loss`` (``sid``, ``missing`` packets), ``key`` (the stream's first
video keyframe: ``codec``, ``width``, ``height``), ``closed`` (the device closed a TCP media
connection), and frames messages while a stream is tapped.
"""
