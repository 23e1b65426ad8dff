using System.Runtime.InteropServices;
using DirBackup.Native;

namespace DirBackup.Restore;

/// <summary>
/// A device's chain as a plain raw file whose data blocks are the layers' own, shared by the filesystem (FICLONERANGE:
/// XFS, btrfs, OpenZFS 2.2 and later where block cloning is on). qemu-img then reads an ordinary file and finds its holes in the filesystem,
/// without the FUSE round trip each read and each lseek costs through <see cref="ChainFileExport"/>; building it copies
/// no data. The file is made unnamed (O_TMPFILE) beside the guest's backups, on the layers' filesystem, and has a name
/// there only while it is bind-mounted read-only at the export path: from then on the mount alone keeps it, so it goes
/// with the mount, after a crash or a reboot as well. Where the filesystem cannot share blocks (ext4) there is no such
/// file, and the caller serves the chain over FUSE.
/// </summary>
public sealed unsafe class ReflinkExport : IChainExport
{
    /// <summary>The block size FICLONERANGE wants offsets and lengths aligned to on XFS, btrfs and OpenZFS (4 KiB blocks).</summary>
    private const long Block = 4096;

    /// <summary>Names a crash left between the link and the unlink below; no export uses them.</summary>
    private const string NamePrefix = ".restore-";

    private ReflinkExport(string path) => Path = path;

    public string Path { get; }

    /// <summary>
    /// The chain shared into a file and mounted read-only at <paramref name="mountpoint"/>; null, with nothing left
    /// behind, where that cannot be done here, and <paramref name="whyNot"/> says why.
    /// </summary>
    public static ReflinkExport? TryStart(ChainFiles chain, string directory, string mountpoint, out string? whyNot)
    {
        var map = chain.Map ?? throw new ArgumentException("a chain only QEMU can read", nameof(chain));
        RemoveStaleNames(directory);
        int fd = Libc.open(directory, Libc.O_TMPFILE | Libc.O_RDWR | Libc.O_CLOEXEC, 0x100);
        if (fd < 0)
        {
            whyNot = $"no unnamed file in '{directory}': {Libc.Describe(Marshal.GetLastPInvokeError())}";
            return null;
        }
        try
        {
            whyNot = Share(map, chain.Fds, fd) ?? MountReadOnly(fd, directory, mountpoint);
            return whyNot is null ? new ReflinkExport(mountpoint) : null;
        }
        finally
        {
            Libc.close(fd);
        }
    }

    /// <summary>Null once <paramref name="fd"/> holds the disk: each data range shared from its layer, zeroes as holes.</summary>
    private static string? Share(ChainMap map, IReadOnlyList<int> layerFds, int fd)
    {
        if (Libc.ftruncate(fd, map.Size) != 0)
        {
            return $"cannot size the file: {Libc.Describe(Marshal.GetLastPInvokeError())}";
        }
        foreach (var (start, length, layer, fileOffset) in map.DataRanges())
        {
            // Only the disk's last range may end off a block: its tail is copied.
            bool last = start + length == map.Size;
            if (start % Block != 0 || fileOffset % Block != 0 || (!last && length % Block != 0))
            {
                return $"the data at {start} is not aligned to {Block} bytes in its layer";
            }
            long shared = length / Block * Block;
            var range = new Libc.FileCloneRange { SourceFd = layerFds[layer], SourceOffset = (ulong)fileOffset, Length = (ulong)shared, DestinationOffset = (ulong)start };
            if (shared > 0 && Libc.ioctl_clone_range(fd, Libc.FICLONERANGE, &range) != 0)
            {
                return $"the filesystem does not share blocks between files here: {Libc.Describe(Marshal.GetLastPInvokeError())}";
            }
            if (shared < length && CopyTail(layerFds[layer], fileOffset + shared, fd, start + shared, (int)(length - shared)) is { } failure)
            {
                return failure;
            }
        }
        return null;
    }

    private static string? CopyTail(int from, long fromOffset, int to, long toOffset, int count)
    {
        byte* buffer = stackalloc byte[(int)Block];
        if (Libc.pread(from, buffer, (nuint)count, fromOffset) != count || Libc.pwrite(to, buffer, (nuint)count, toOffset) != count)
        {
            return $"cannot copy the disk's last {count} bytes: {Libc.Describe(Marshal.GetLastPInvokeError())}";
        }
        return null;
    }

    /// <summary>Bind-mounts the file read-only at <paramref name="mountpoint"/>; a bind needs a name, which it has only meanwhile.</summary>
    private static string? MountReadOnly(int fd, string directory, string mountpoint)
    {
        var name = System.IO.Path.Combine(directory, $"{NamePrefix}{Guid.NewGuid():N}.raw");
        if (Libc.linkat(fd, "", Libc.AT_FDCWD, name, Libc.AT_EMPTY_PATH) != 0)
        {
            return $"cannot name the file in '{directory}': {Libc.Describe(Marshal.GetLastPInvokeError())}";
        }
        try
        {
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(mountpoint)!);
            File.WriteAllBytes(mountpoint, []);
            if (Libc.mount(name, mountpoint, null, Libc.MS_BIND, null) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                File.Delete(mountpoint);
                return $"cannot bind-mount it at '{mountpoint}': {Libc.Describe(errno)}";
            }
            // A bind mount takes its own flags only on a remount.
            if (Libc.mount(null, mountpoint, null, Libc.MS_REMOUNT | Libc.MS_BIND | Libc.MS_RDONLY | Libc.MS_NOSUID | Libc.MS_NODEV | Libc.MS_NOEXEC, null) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                Unmount(mountpoint);
                return $"cannot make '{mountpoint}' read-only: {Libc.Describe(errno)}";
            }
            return null;
        }
        finally
        {
            File.Delete(name);
        }
    }

    private static void RemoveStaleNames(string directory)
    {
        try
        {
            foreach (var stale in Directory.EnumerateFiles(directory, NamePrefix + "*.raw"))
            {
                // A name younger than a minute may be another export's, between its link and its unlink.
                if (File.GetLastWriteTimeUtc(stale) < DateTime.UtcNow.AddMinutes(-1))
                {
                    File.Delete(stale);
                }
            }
        }
        catch (IOException)
        {
        }
    }

    private static void Unmount(string mountpoint)
    {
        Libc.UnmountOrDetach(mountpoint);
        try
        {
            File.Delete(mountpoint);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Unmounting frees the file; a reader still holding it keeps it until it lets go.</summary>
    public Task StopAsync()
    {
        Unmount(Path);
        return Task.CompletedTask;
    }
}
