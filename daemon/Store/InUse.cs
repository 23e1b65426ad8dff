using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Store;

/// <summary>
/// Restores, deletes and merges of a guest's backups exclude each other through open-file-description locks on
/// <c>.restore.lock</c> in the guest's directory. Being the kernel's (and, through NFS's lock manager, the server's),
/// they hold between the nodes of a cluster that share the storage as well as within this daemon:
/// <list type="bullet">
/// <item>a restore holds a shared lock on its backup's byte (see <see cref="ByteOf"/>) from its init to its cleanup;</item>
/// <item>a delete holds that byte exclusively, so a backup being restored is not deleted, nor restored while deleted;</item>
/// <item>a merge changes images that the restore of any backup of the guest may read, so it holds the whole file.</item>
/// </list>
/// Every lock is only tried, never waited for, and goes with the process holding it: a crashed daemon leaves none.
/// </summary>
public static class InUse
{
    public const string FileName = ".restore.lock";

    /// <summary>PVE always ends a restore with its cleanup call, unless its task was killed outright (see RestoreCallers).</summary>
    private const string StaleHint = "a restore whose task was killed holds it until dirbackupd on its node notices, within a minute";

    private static readonly Lock Gate = new();
    private static readonly Dictionary<(string Root, VolumeName Volume), Use> Uses = [];

    /// <summary>A byte per backup; VM and container backups of one guest id may share a backup time.</summary>
    private static long ByteOf(VolumeName volume) => volume.BackupTime * 2 + (volume.Type == GuestType.Lxc ? 1 : 0);

    private static VolumeName VolumeAt(int vmid, long offset) => new(vmid, offset % 2 == 1 ? GuestType.Lxc : GuestType.Qemu, offset / 2);

    /// <summary>Marks a backup as being restored; each call is undone by <see cref="Release"/> or all at once by <see cref="ReleaseAll"/>.</summary>
    public static void Acquire(string root, VolumeName volume)
    {
        lock (Gate)
        {
            if (Uses.TryGetValue((root, volume), out var use))
            {
                use.Count++;
                return;
            }
            var file = OpenLockFile(root, volume.VmId, forWriting: false);
            if (file is not null && TryLock(file, Libc.F_RDLCK, ByteOf(volume), 1) is { } holder)
            {
                file.Dispose();
                throw new DirBackupException(ErrorCode.Busy, holder.Length == 1
                    ? $"cannot restore '{volume}' now: it is being deleted, here or on another node sharing the storage"
                    : $"cannot restore '{volume}' now: a backup of guest {volume.VmId} is being merged into a newer one (a delete or prune is running, here or on another node sharing the storage); try again when it ends");
            }
            Uses[(root, volume)] = new Use(file);
        }
    }

    /// <summary>Gives back one <see cref="Acquire"/> whose use never started.</summary>
    public static void Release(string root, VolumeName volume)
    {
        lock (Gate)
        {
            if (Uses.TryGetValue((root, volume), out var use) && --use.Count == 0)
            {
                Uses.Remove((root, volume));
                use.File?.Dispose();
            }
        }
    }

    public static void ReleaseAll(string root, VolumeName volume)
    {
        lock (Gate)
        {
            if (Uses.Remove((root, volume), out var use))
            {
                use.File?.Dispose();
            }
        }
    }

    /// <summary>Whether this daemon is restoring the backup.</summary>
    public static bool IsInUse(string root, VolumeName volume)
    {
        lock (Gate)
        {
            return Uses.ContainsKey((root, volume));
        }
    }

    /// <summary>Claims a backup for deletion; refused while it is being restored, here or on another node.</summary>
    public static DeleteClaim BeginDelete(string root, VolumeName volume)
    {
        var file = OpenLockFile(root, volume.VmId, forWriting: true)!;
        if (TryLock(file, Libc.F_WRLCK, ByteOf(volume), 1) is not null)
        {
            file.Dispose();
            throw new DirBackupException(ErrorCode.Busy, $"cannot remove backup '{volume}': it is being restored, here or on another node sharing the storage; try again after the restore ({StaleHint})");
        }
        return new DeleteClaim(file, volume);
    }

    /// <summary>A backup being deleted: nothing restores it until the claim is disposed.</summary>
    public sealed class DeleteClaim(FileStream file, VolumeName volume) : IDisposable
    {
        /// <summary>
        /// Before the backup is merged into newer ones: the whole guest, refused while any of its backups is being
        /// restored. On refusal the claim keeps what it held.
        /// </summary>
        public void ExcludeRestoresOfGuest()
        {
            if (TryLock(file, Libc.F_WRLCK, 0, 0) is { } holder)
            {
                throw new DirBackupException(ErrorCode.Busy,
                    $"cannot remove backup '{volume}': merging it into the backups based on it changes images that the restore of '{VolumeAt(volume.VmId, holder.Start)}' reads; try again after the restore ({StaleHint})");
            }
        }

        // Closing the descriptor releases its locks.
        public void Dispose() => file.Dispose();
    }

    private sealed class Use(FileStream? file)
    {
        public FileStream? File { get; } = file;
        public int Count { get; set; } = 1;
    }

    /// <summary>
    /// The guest's lock file. Where this node may not write it (a storage mounted read-only, or an NFS export that
    /// squashes root), it cannot change any backup of the guest either, so a restore goes ahead without the lock, as
    /// restores did before there was one.
    /// </summary>
    private static FileStream? OpenLockFile(string root, int vmid, bool forWriting)
    {
        var path = Path.Combine(root, vmid.ToString(System.Globalization.CultureInfo.InvariantCulture), FileName);
        try
        {
            // Opened for writing even to read-lock it: .NET then leaves out its own flock, which NFS would turn into a
            // lock on the whole file.
            return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            bool mayNotWrite = e is UnauthorizedAccessException
                || (Libc.statvfs(Path.GetDirectoryName(path)!, out var vfs) == 0 && (vfs.f_flag & Libc.ST_RDONLY) != 0);
            if (!forWriting && mayNotWrite)
            {
                return null;
            }
            throw DirBackupException.Io($"cannot open the restore lock '{path}': {e.Message}");
        }
    }

    /// <summary>
    /// Takes or converts this descriptor's lock on [start, start+length) (length 0: to the end of the file); on
    /// conflict, returns a lock in the way.
    /// </summary>
    private static (long Start, long Length)? TryLock(FileStream file, short type, long start, long length)
    {
        for (int attempt = 1; ; attempt++)
        {
            if (FileLock.TrySetRange(file, file.Name, type, start, length))
            {
                return null;
            }
            var holder = new Libc.Flock { l_type = type, l_whence = 0, l_start = start, l_len = length };
            if (Libc.fcntl_lock((int)file.SafeFileHandle.DangerousGetHandle(), Libc.F_OFD_GETLK, ref holder) == 0 && holder.l_type != Libc.F_UNLCK)
            {
                return (holder.l_start, holder.l_len);
            }
            if (attempt == 3)
            {
                // Whoever was in the way keeps letting go and coming back: the caller's own range says what was.
                return (start, length);
            }
        }
    }
}
