# Varnish under `make bench`: the shard director over the origin (one backend, as a
# single mirror owning everything), malloc storage (file storage for the disk scenario)
# with the same byte budget as the others, set on the command line by servers.py, and
# hitch in front for TLS, speaking PROXY v2 to a second listener. Request coalescing
# is Varnish's default.
vcl 4.1;
import directors;

backend origin {
    .host = "127.0.0.1";
    .port = "@ORIGIN_PORT@";
    .connect_timeout = 2s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 30s;
}

sub vcl_init {
    new shard = directors.shard();
    shard.add_backend(origin);
    shard.reconfigure();
}

sub vcl_recv {
    if (req.url !~ "^/_(images|thumbs)/") {
        return (synth(404));
    }
    set req.backend_hint = shard.backend(by=URL);
    unset req.http.Cookie;
    return (hash);
}

# By URL alone, as nginx's proxy_cache_key $uri and shimmer's md5: Varnish's default
# hash adds the Host, which differs between the plain and the TLS listener, so the
# https-disk run after the plain one would miss everything again.
sub vcl_hash {
    hash_data(req.url);
    return (lookup);
}

sub vcl_backend_response {
    # Images are addressed by their md5: cache them for as long as they live.
    if (beresp.status == 200) {
        set beresp.ttl = 365d;
    } else {
        set beresp.ttl = 10s;
    }
}
