using System.Runtime.InteropServices;
using DirBackup.Errors;
using DirBackup.Native;

namespace DirBackup.Restore;

/// <summary>
/// A chain's layer files, open and checked, with the map of where each byte of the disk lives in them: what the
/// daemon's own exports serve from. The files stay open from the check to the end of the export, so a name swapped
/// meanwhile changes nothing. Disposing closes them unless an export took them over.
/// </summary>
public sealed class ChainFiles : IDisposable
{
    private int[]? _fds;

    private ChainFiles(int[] fds, ChainMap? map)
    {
        _fds = fds;
        Map = map;
    }

    /// <summary>Null when the chain holds data that only QEMU can read (compressed clusters).</summary>
    public ChainMap? Map { get; }

    public IReadOnlyList<int> Fds => _fds ?? throw new ObjectDisposedException(nameof(ChainFiles));

    public static async Task<ChainFiles> OpenAsync(IReadOnlyList<ChainLayer> layers, CancellationToken cancellationToken)
    {
        var fds = new List<int>();
        try
        {
            foreach (var layer in layers)
            {
                fds.Add(OpenLayer(layer));
            }
            // qemu-img maps the very files we hold open, whatever happens to the names meanwhile.
            var map = await ChainMap.BuildAsync(fds.Select(fd => $"/proc/{Environment.ProcessId}/fd/{fd}").ToList(), layers[^1].Size, cancellationToken).ConfigureAwait(false);
            var files = new ChainFiles([.. fds], map);
            fds.Clear();
            return files;
        }
        finally
        {
            foreach (int fd in fds)
            {
                Libc.close(fd);
            }
        }
    }

    private static int OpenLayer(ChainLayer layer)
    {
        int fd = Libc.open(layer.Path, Libc.O_RDONLY | Libc.O_NOFOLLOW | Libc.O_CLOEXEC);
        if (fd < 0)
        {
            throw DirBackupException.Io($"{layer.Backup}: cannot open '{layer.Path}': {Libc.Describe(Marshal.GetLastPInvokeError())}");
        }
        if (Libc.FileType(fd) != Libc.S_IFREG)
        {
            Libc.close(fd);
            throw DirBackupException.Io($"{layer.Backup}: image '{layer.Path}' is not a regular file (a link or something else replaced it)");
        }
        return fd;
    }

    /// <summary>The open files, now the caller's to close.</summary>
    public int[] TakeFds()
    {
        var fds = _fds ?? throw new ObjectDisposedException(nameof(ChainFiles));
        _fds = null;
        return fds;
    }

    public void Dispose()
    {
        foreach (int fd in _fds ?? [])
        {
            Libc.close(fd);
        }
        _fds = null;
    }
}
