-- Argo CD health check for stead.dev/App.
-- Installed as argocd-cm data key
--   resource.customizations.health.stead.dev_App
-- (manifests/argocd/argocd-cm-patch.yaml carries this exact text).
--
--   Degraded     Progressing=False with reason ProgressDeadlineExceeded for
--                the current generation: the rollout is stuck, as Argo CD
--                judges a Deployment
--   Healthy      Available=True for the current generation (with the URL
--                when the App has an Ingress)
--   Progressing  anything else: no status yet, status lags
--                metadata.generation, or a rollout is under way
--
-- Written for Lua 5.1 (Argo CD runs gopher-lua) and only the libraries Argo
-- CD opens for health checks: base and table, as databasecluster.lua.

local hs = { status = "Progressing" }

local function field(t, key)
  if type(t) == "table" then
    return t[key]
  end
  return nil
end

local function nonempty(v)
  return type(v) == "string" and v ~= ""
end

local generation = field(obj.metadata, "generation")
local status = obj.status
local observed = field(status, "observedGeneration")

-- The conditions by type; malformed entries are ignored.
local by_type = {}
local listed = field(status, "conditions")
if type(listed) == "table" then
  for _, c in ipairs(listed) do
    if type(c) == "table" and nonempty(c.type) then
      by_type[c.type] = c
    end
  end
end

-- "Reason: message", either alone, or `otherwise` when neither is written.
local function says(c, otherwise)
  local parts = {}
  if nonempty(c.reason) then
    table.insert(parts, c.reason)
  end
  if nonempty(c.message) then
    table.insert(parts, c.message)
  end
  if #parts == 0 then
    return otherwise
  end
  return table.concat(parts, ": ")
end

-- A condition counts when it was written for the current generation (its
-- own observedGeneration, or else the status's).
local function fresh(c)
  if c == nil then
    return false
  end
  if type(generation) ~= "number" then
    return true
  end
  local seen = c.observedGeneration
  if type(seen) ~= "number" then
    seen = observed
  end
  return seen == generation
end

local progressing = by_type["Progressing"]
if fresh(progressing) and progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded" then
  hs.status = "Degraded"
  hs.message = says(progressing, "ProgressDeadlineExceeded")
  return hs
end

if type(observed) ~= "number" then
  hs.message = "Waiting for stead-controller to report status"
  return hs
end
if type(generation) == "number" and observed < generation then
  hs.message = "Waiting for stead-controller to observe generation " .. tostring(generation)
  return hs
end

local available = by_type["Available"]
if fresh(available) and available.status == "True" then
  hs.status = "Healthy"
  hs.message = says(available, "Available")
  local url = field(status, "url")
  if nonempty(url) then
    hs.message = hs.message .. " (" .. url .. ")"
  end
  return hs
end

local ready = field(status, "readyReplicas")
local wanted = field(obj.spec, "replicas")
local waiting = "Waiting for the App to become available"
if type(wanted) == "number" then
  if type(ready) ~= "number" then
    ready = 0
  end
  waiting = "Waiting for replicas: " .. tostring(ready) .. "/" .. tostring(wanted) .. " ready"
end
hs.message = waiting
if fresh(progressing) then
  hs.message = says(progressing, waiting)
end
return hs
