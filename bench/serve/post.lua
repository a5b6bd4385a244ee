-- wrk script: POST the JSON body in the file named by $MTREC_BODY, and
-- print the count of non-2xx/3xx answers at the end.
--   MTREC_BODY=rank_body.json wrk -t2 -c8 -d10s --latency -s post.lua http://127.0.0.1:8080/v1/rank
local f = assert(io.open(os.getenv("MTREC_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("non-2xx/3xx responses: %d, socket errors: %d\n", summary.errors.status,
                         summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
