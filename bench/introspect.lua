-- What a user would otherwise write inside Envoy: an `envoy.filters.http.lua` filter that
-- introspects every bearer token at the authorization server (client_secret_post, plain
-- JSON answer, no cache), checks `"active":true` with a string match, takes `sub` with a
-- pattern and forwards it as `x-user-sub`. bench/run.py inlines it (`inline_code`) after
-- replacing @AUTHORITY@, @CLIENT_ID@ and @CLIENT_SECRET@.

local FORM_SUFFIX = "&client_id=@CLIENT_ID@&client_secret=@CLIENT_SECRET@"

local function deny(handle, status)
  handle:respond({ [":status"] = status, ["www-authenticate"] = 'Bearer realm="api"' }, "")
end

local function form_encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove("x-user-sub")
  local auth = headers:get("authorization")
  local token = auth and auth:match("^[Bb]earer +(%S+)$")
  if not token then
    deny(handle, "401")
    return
  end
  local answer_headers, body = handle:httpCall("authorization_server", {
    [":method"] = "POST",
    [":path"] = "/api/v2/token/introspection",
    [":authority"] = "@AUTHORITY@",
    ["content-type"] = "application/x-www-form-urlencoded",
    ["accept"] = "application/json",
  }, "token=" .. form_encode(token) .. FORM_SUFFIX, 5000)
  if answer_headers[":status"] ~= "200" or not body then
    deny(handle, "503")
    return
  end
  if not body:find('"active":true', 1, true) then
    deny(handle, "401")
    return
  end
  local sub = body:match('"sub":"([^"]+)"')
  if not sub then
    deny(handle, "401")
    return
  end
  -- Header maps obtained before the httpCall yield are no longer usable: fetch again.
  handle:headers():replace("x-user-sub", sub)
end
