using System.Collections.Concurrent;
using DirBackup.Errors;
using DirBackup.Qemu;
using DirBackup.Store;

namespace DirBackup.Restore;

/// <summary>
/// The directory restore mechanism: a container's squashfs image mounted read-only in the host mount namespace
/// under the daemon's runtime directory, where pve-container copies the tree from (as host root, so the image's
/// container-relative owners arrive unchanged in the container's user namespace).
/// </summary>
public sealed class ContainerMounts(string exportDir)
{
    private readonly ConcurrentDictionary<(string Root, VolumeName Volume), string> _mounts = new();
    private readonly SemaphoreSlim _lock = new(1, 1);

    public async Task<string> MountAsync(BackupStore store, VolumeName volume, string image, CancellationToken cancellationToken)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_mounts.TryGetValue((store.Root, volume), out var existing))
            {
                return existing;
            }
            InUse.Acquire(store.Root, volume);
            var mountpoint = Path.Combine(exportDir, $"ct-{volume.VmId}-{volume.BackupDirName}-{Guid.NewGuid():N}");
            Directory.CreateDirectory(mountpoint);
            try
            {
                await ChildProcess.RunAsync("mount", ["-t", "squashfs", "-o", "ro,nodev,nosuid,loop", image, mountpoint], cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                Directory.Delete(mountpoint);
                InUse.Release(store.Root, volume);
                throw;
            }
            _mounts[(store.Root, volume)] = mountpoint;
            return mountpoint;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>
    /// The cleanup of either mechanism; idempotent. A mount still in use stays mounted and the cleanup says so;
    /// calling it again later finishes it.
    /// </summary>
    public async Task UnmountAsync(string root, VolumeName volume)
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (!_mounts.TryGetValue((root, volume), out var mountpoint))
            {
                InUse.ReleaseAll(root, volume);
                return;
            }
            try
            {
                await ChildProcess.RunAsync("umount", [mountpoint], CancellationToken.None).ConfigureAwait(false);
            }
            catch (DirBackupException e)
            {
                throw new DirBackupException(ErrorCode.Busy, $"cannot unmount the restore of '{volume}' at {mountpoint}: {e.Message}; run the cleanup again once nothing uses it");
            }
            Directory.Delete(mountpoint);
            _mounts.TryRemove((root, volume), out _);
            InUse.ReleaseAll(root, volume);
        }
        finally
        {
            _lock.Release();
        }
    }

    public async Task UnmountAllAsync()
    {
        foreach (var mountpoint in _mounts.Values)
        {
            try
            {
                await ChildProcess.RunAsync("umount", ["-l", mountpoint], CancellationToken.None).ConfigureAwait(false);
                Directory.Delete(mountpoint);
            }
            catch (Exception e) when (e is DirBackupException or IOException)
            {
                // Removed at the next start.
            }
        }
        _mounts.Clear();
    }
}
