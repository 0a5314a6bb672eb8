wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"jina-embeddings-v3","input":["' .. io.open("/tmp/bench/text1.txt"):read("*a") .. '"]}'
