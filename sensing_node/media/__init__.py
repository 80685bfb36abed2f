"""Live streams: INVITE sessions with devices, and the stream hub that shares them.

One `LiveStream` per channel pulls the device's PS-over-RTP stream (GB/T 28181-2016 9.2, live
play with `s=Play`) and hands it to any number of `Consumer`s: the recorder, the cascade, a web
preview. The first subscriber starts the INVITE; when the last one leaves, the stream lingers for
`media.linger_s` and then ends with BYE.

An attempt goes: allocate a port (UDP, or TCP for the two TCP modes) and an SSRC (`y=`, unique
among running streams), INVITE with the SDP offer and the Subject header, wait for the final
answer (`media.answer_timeout_s`, then CANCEL), build the dialog from the 2xx, ACK, and watch the
media. The device's answer is taken as devices really send it: its own `y=` wins over ours, a
missing `y=` means the SSRC is learnt from the first packet, and for UDP the media may come from
the SDP address or from the device's signalling address (NAT). Where the answer contradicts the
offer (another transport, no `a=setup`, no usable `c=`), the offer decides and the device gets a
quirk in the registry. Which transport an attempt uses is `StreamHub.transport_plan`'s choice;
one that fails in a way another could avoid moves the stream on to the next.

A stream ends an attempt when no media came for `media.timeout_s` (also right after the ACK), when
the device hangs up (BYE) or closes the TCP media connection. While somebody still consumes it,
the stream is invited again with exponential backoff; the reason stays visible in the API
(`last_error`) and in the list of ended sessions. Each attempt releases its port and SSRC.

Per packet, the stream only checks the sequence number and adds the payload to its frame (and
hands it to the consumers that asked for RTP payloads); the PS is demuxed once per frame, and
everything else happens per frame or on the hub's half-second tick. A consumer must not block:
`on_unit` is called on the event loop, and one that raises is counted, not allowed to disturb the
others. `FrameQueue` is the consumer for asynchronous readers: bounded, it drops frames up to
the next keyframe when its reader falls behind.
"""
