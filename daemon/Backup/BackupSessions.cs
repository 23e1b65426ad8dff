using System.Collections.Concurrent;
using DirBackup.Errors;
using DirBackup.Store;

namespace DirBackup.Backup;

/// <summary>
/// The backups in progress, keyed by what PVE passes (storage path and vmid), never by connection. The
/// connection that started one only matters when it drops: vzdump was killed, so its backup is abandoned.
/// </summary>
public sealed class BackupSessions
{
    private readonly ConcurrentDictionary<(string Root, int VmId), GuestBackup> _sessions = new();

    public async Task<GuestBackup> StartAsync(BackupStore store, VolumeName volume, object owner, CancellationToken closed)
    {
        Directory.CreateDirectory(store.GuestDir(volume.VmId));
        var guestLock = await FileLock.AcquireAsync(store.BackupLockPath(volume.VmId),
            $"backup of guest {volume.VmId} on storage '{store.Config.StoreId}'", TimeSpan.Zero, CancellationToken.None).ConfigureAwait(false);
        var session = new GuestBackup(store, volume, guestLock, owner);
        try
        {
            if (Directory.Exists(session.FinalDir))
            {
                throw new DirBackupException(ErrorCode.InvalidParams, $"backup '{volume}' already exists; start the next backup of guest {volume.VmId} a second later");
            }
            store.RemoveLeftoverStaging(volume.VmId);
            Directory.CreateDirectory(session.StagingDir);
            var key = (store.Root, volume.VmId);
            if (_sessions.TryGetValue(key, out var old))
            {
                old.Finish();
            }
            _sessions[key] = session;
            closed.Register(() => Abandon(key, session));
            return session;
        }
        catch
        {
            session.Finish();
            throw;
        }
    }

    /// <summary>The guest's backup still holding its lock (between backup_init and backup_cleanup).</summary>
    public GuestBackup? Find(BackupStore store, int vmid) =>
        _sessions.TryGetValue((store.Root, vmid), out var s) && !s.Finished ? s : null;

    /// <summary>The guest's backup, also after backup_cleanup, until backup_handle_log_file ends it.</summary>
    public GuestBackup? FindAny(BackupStore store, int vmid) =>
        _sessions.TryGetValue((store.Root, vmid), out var s) ? s : null;

    /// <summary>The last step for a guest (backup_handle_log_file, or backup_cleanup of a failure) forgets it.</summary>
    public void End(GuestBackup session)
    {
        session.Finish();
        _sessions.TryRemove(new KeyValuePair<(string, int), GuestBackup>((session.Store.Root, session.Volume.VmId), session));
    }

    /// <summary>job_cleanup: whatever this job left open is over.</summary>
    public void EndAll(string root, object owner)
    {
        foreach (var (key, session) in _sessions)
        {
            if (key.Root == root && ReferenceEquals(session.Owner, owner))
            {
                End(session);
            }
        }
    }

    private void Abandon((string, int) key, GuestBackup session)
    {
        // A call still running notices its own cancellation and cleans up when it returns.
        if (!session.Running)
        {
            End(session);
        }
    }
}
