-- Argo CD health check for stead.dev/DatabaseCluster.
-- Installed as argocd-cm data key
--   resource.customizations.health.stead.dev_DatabaseCluster
-- (manifests/argocd/argocd-cm-patch.yaml carries this exact text).
--
--   Degraded     Degraded=True for the current generation
--                (InvalidSpec when the webhook was bypassed, or a failure)
--   Suspended    spec.paused is true
--   Progressing  no status yet, status lags metadata.generation, or the
--                cluster is still rolling out
--   Healthy      Available=True for the current generation
--
-- Written for Lua 5.1 (Argo CD runs gopher-lua) and only the libraries Argo
-- CD opens for health checks: base and table. There is no string or math
-- library (so no string.format), and no io.

local hs = {}

local function find_condition(conditions, wanted)
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if type(c) == "table" and c.type == wanted then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local reason = c.reason
  local message = c.message
  if type(message) == "string" and message ~= "" then
    if type(reason) == "string" and reason ~= "" then
      return reason .. ": " .. message
    end
    return message
  end
  if type(reason) == "string" and reason ~= "" then
    return reason
  end
  return fallback
end

local function number_or_nil(v)
  if type(v) == "number" then
    return v
  end
  return nil
end

local spec = obj.spec
if type(spec) ~= "table" then
  spec = {}
end
local status = obj.status
local metadata = obj.metadata
if type(metadata) ~= "table" then
  metadata = {}
end
local generation = number_or_nil(metadata.generation)

local observed = nil
local conditions = nil
if type(status) == "table" then
  observed = number_or_nil(status.observedGeneration)
  conditions = status.conditions
end

-- A condition speaks for the current spec when its own observedGeneration
-- (or, without one, the status's) matches metadata.generation.
local function current(c)
  if c == nil then
    return false
  end
  if generation == nil then
    return true
  end
  local seen = number_or_nil(c.observedGeneration)
  if seen == nil then
    seen = observed
  end
  return seen == generation
end

local degraded = find_condition(conditions, "Degraded")
if degraded ~= nil and degraded.status == "True" and current(degraded) then
  hs.status = "Degraded"
  hs.message = describe(degraded, "DatabaseCluster is degraded")
  return hs
end

local progressing = find_condition(conditions, "Progressing")

if spec.paused == true then
  hs.status = "Suspended"
  if progressing ~= nil and progressing.reason == "Paused" then
    hs.message = describe(progressing, "Paused")
  else
    hs.message = "Paused: spec.paused is true, so stead-controller leaves the cluster's children alone"
  end
  return hs
end

if observed == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for stead-controller to report status"
  return hs
end

if generation ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for stead-controller to observe generation " .. tostring(generation)
    .. " (status is for generation " .. tostring(observed) .. ")"
  return hs
end

local available = find_condition(conditions, "Available")
if available ~= nil and available.status == "True" and current(available) then
  hs.status = "Healthy"
  hs.message = describe(available, "DatabaseCluster is available")
  return hs
end

local fallback = "Waiting for the DatabaseCluster to become available"
local ready = number_or_nil(status.readyReplicas)
local replicas = number_or_nil(spec.replicas)
if replicas == nil then
  replicas = number_or_nil(status.replicas)
end
if replicas ~= nil then
  fallback = "Waiting for replicas: " .. tostring(ready or 0) .. "/" .. tostring(replicas) .. " ready"
end
hs.status = "Progressing"
if current(progressing) then
  hs.message = describe(progressing, fallback)
elseif current(available) then
  hs.message = describe(available, fallback)
else
  hs.message = fallback
end
return hs
