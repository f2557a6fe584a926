-- Argo CD health check for stead.dev/DatabaseBackup.
-- Installed as argocd-cm data key
--   resource.customizations.health.stead.dev_DatabaseBackup
-- (manifests/argocd/argocd-cm-patch.yaml carries this exact text).
--
--   Healthy      status.phase is Completed: the backup can be restored
--   Degraded     status.phase is Failed (status.error is the message); a
--                failed backup is not retried, take a new one
--   Progressing  anything else: no status yet, Pending or Running
--
-- Written for Lua 5.1 (Argo CD runs gopher-lua) and only the libraries Argo
-- CD opens for health checks: base and table, as databasecluster.lua.

local hs = {}

local status = obj.status
if type(status) ~= "table" then
  status = {}
end
local phase = status.phase

local function text(v)
  if type(v) == "string" and v ~= "" then
    return v
  end
  return nil
end

if phase == "Completed" then
  hs.status = "Healthy"
  local instance = text(status.instance)
  if instance ~= nil then
    hs.message = "Completed: the snapshots of " .. instance .. " are ready to use"
  else
    hs.message = "Completed: the snapshots are ready to use"
  end
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  local err = text(status.error)
  if err ~= nil then
    hs.message = "Failed: " .. err
  else
    hs.message = "Failed"
  end
  return hs
end

hs.status = "Progressing"
if phase == "Running" then
  hs.message = "Running: taking the snapshots"
elseif phase == "Pending" then
  hs.message = "Pending: waiting for stead-controller to start the backup"
else
  hs.message = "Waiting for stead-controller to start the backup"
end
return hs
